"""Serving speed through a real tritonserver, against the loop a user would write with diffusers.

In one process, on one base (default ``tiny``; the issue's setting is ``--base-model sd15-random
--size 256 --steps 20``):

- ``plain_loop``: diffusers' own pipeline (``DiffusionPipeline.from_pretrained`` on the same
  folder, the LoRA loaded with ``load_lora_weights``) called once per prompt, in its default
  precision (fp32) and in the precision dreamloom serves in (bf16 on CPUs with AMX).
- ``throughput``: images/s and p50/p95 through Triton at concurrency 1, 4 and 8 with one LoRA,
  and at concurrency 8 with 10 and 50 distinct LoRAs round-robin (each batch mixes them: one
  UNet call per step, each sample its own adapter); the in-process ceiling, the engine called
  with full batches of 8.
- ``overhead``: round trip through Triton minus the time Triton reports inside the model
  (``compute_infer``), one-step images one at a time.
- ``adapter_switch``: giving a batch its samples' adapters on the loaded engine, against loading
  a pipeline with the adapter from disk.
- ``deploy``: from moving the alias in MLflow to the first image from the new version.
- ``targets``: each ratio against the goal it is measured for.

The 50 LoRAs are one trained LoRA and seeded perturbations of it (distinct weights, files and
digests: to the server, 50 brands); training 50 on a real architecture would take hours here and
measure nothing more. Every adapter is loaded once (a dry-run request) before measuring: the
steady state of a deployment whose brands are all in the adapter cache.

Prints JSON; ``--out FILE`` also writes it.

    .venv/bin/python bench/serve.py
    .venv/bin/python bench/serve.py --base-model sd15-random --size 256 --steps 20 --requests 8
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from report import emit  # bench/report.py: these scripts run with bench/ on sys.path

CONCURRENCY = (1, 4, 8)
ADAPTER_COUNTS = (10, 50)  # distinct LoRAs round-robin, at the highest concurrency
PROMPT = "a photo of a red sneaker on a white background"
TARGETS = {  # what each ratio is measured against (issue: serving at scale)
    "concurrency_8_over_plain_loop_default_precision": 1.5,
    "concurrency_8_over_plain_loop_our_precision": 1.2,
    "adapters_50_over_adapters_1_at_concurrency_8": 0.9,
}
OVERHEAD_TARGET_MS = 5.0


def main() -> None:
    args = _parse()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    from dreamloom.logs import quiet_library_logging
    from dreamloom.settings import apply_quiet_defaults

    apply_quiet_defaults()
    quiet_library_logging()
    # Trained adapters and a Triton store: gigabytes on a real architecture, gone when the bench ends.
    with tempfile.TemporaryDirectory(prefix="dreamloom-bench-serve-") as scratch:
        home = Path(scratch)
        os.environ["DREAMLOOM_HOME"] = str(home)
        report = run(args, home)
    emit(report, args.out)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default="tiny")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per image")
    parser.add_argument("--requests", type=int, default=32, help="images per throughput measurement")
    parser.add_argument("--loop-images", type=int, help="images per plain-loop measurement (default: --requests)")
    parser.add_argument("--pairs", type=int, default=20, help="one-step round trips for the overhead")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    return parser.parse_args()


def run(args, home: Path) -> dict:
    from dreamloom.models.precision import inference_dtype
    from dreamloom.serving.client import ServingClient
    from dreamloom.serving.repository import ServingStore
    from dreamloom.serving.server import TritonServer, free_port

    lora = _train_lora(args.base_model, home, seed=0)
    brands = _brands(lora, home / "brands", max(ADAPTER_COUNTS))
    report = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
        "setup": {
            "base_model": args.base_model,
            "size": args.size,
            "steps": args.steps,
            "requests": args.requests,
            "served_dtype": str(inference_dtype("cpu")).removeprefix("torch."),
        },
    }
    report["plain_loop"] = _plain_loops(args, lora)
    store = ServingStore(home / "store")
    _serve_brands(store, args.base_model, brands)
    server = TritonServer.for_store(store, ["dreamloom"], free_port(), free_port(), free_port())
    with server:
        client = ServingClient(server.http_url, admin_key=store.admin_key())
        names = [brand.name for brand in brands]
        _warm(args, client, names)
        report["throughput"] = _throughput(args, client, names)
        report["overhead"] = _overhead(args, client)
        engine = _engine(args, store)
        report["throughput"]["in_process_batch_of_8"] = _ceiling(args, engine)
        report["adapter_switch"] = _adapter_switch(engine, store, lora)
        del engine
        gc.collect()
        report["deploy"] = _deploy_time(server, store, lora)
        client.close()
    report["targets"] = _targets(report)
    return report


# ----- measurements -----


def _request(args, seed: int = 0, adapter: str = "", steps: int | None = None):
    from dreamloom.serving.protocol import ImageRequest

    size = {"width": args.size, "height": args.size}
    return ImageRequest(PROMPT, seed=seed, steps=steps or args.steps, adapter=adapter, **size)


def _plain_loops(args, lora: Path) -> dict:
    """The loop a user would write: diffusers' pipeline from the same folder with the LoRA loaded,
    one prompt at a time, in diffusers' default precision and in the one dreamloom serves in."""
    from diffusers import DiffusionPipeline

    from dreamloom.models.base import resolve_base_model
    from dreamloom.models.precision import inference_dtype
    from dreamloom.serving.loadtest import latency_summary

    folder = resolve_base_model(args.base_model).location
    results = {}
    # diffusers' default is fp32 for the hub's checkpoints; the random bases are saved in bf16, which
    # from_pretrained would keep, so the default is named.
    for label, dtype in (("default_precision", torch.float32), ("our_precision", inference_dtype("cpu"))):
        pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype)
        pipe.load_lora_weights(lora)
        pipe.set_progress_bar_config(disable=True)
        size = {"height": args.size, "width": args.size, "num_inference_steps": args.steps}

        def one(seed: int, pipe=pipe, size=size) -> None:
            pipe(PROMPT, generator=torch.Generator().manual_seed(seed), **size)

        one(0)  # first call: allocations, lazy initialisation
        images = args.loop_images or args.requests
        latencies = []
        for seed in range(images):
            began = time.perf_counter()
            one(seed)
            latencies.append(time.perf_counter() - began)
        results[label] = {
            "dtype": str(pipe.unet.dtype).removeprefix("torch."),
            "images": images,
            "images_per_s": round(images / sum(latencies), 3),
            "latency_ms": latency_summary(latencies),
        }
        del pipe
        gc.collect()
    return results


def _warm(args, client, brands: list[str]) -> None:
    """Each adapter loaded into the server's cache once, and the first real image rendered."""
    for name in brands:
        client.generate(dataclasses.replace(_request(args, adapter=f"{name}@champion"), dry_run=True))
    client.generate(_request(args, adapter=f"{brands[0]}@champion", steps=1))


def _throughput(args, client, brands: list[str]) -> dict:
    from dreamloom.serving.loadtest import LoadPlan, run_load

    points = [(concurrency, 1) for concurrency in CONCURRENCY]
    points += [(max(CONCURRENCY), count) for count in ADAPTER_COUNTS]
    result = {}
    for concurrency, count in points:
        plan = LoadPlan(
            requests=args.requests,
            concurrency=concurrency,
            adapters=tuple(f"{name}@champion" for name in brands[:count]),
            prompt=PROMPT,
            steps=args.steps,
            size=args.size,
        )
        load = run_load(client, plan)
        if load.failures:
            raise SystemExit(f"bench: requests failed at concurrency {concurrency}: {load.first_errors}")
        result[f"concurrency_{concurrency}_adapters_{count}"] = {
            "images_per_s": load.images_per_second,
            "latency_ms": load.latency_ms,
        }
    return result


def _engine(args, store):
    from dreamloom.serving.engine import Engine, EngineConfig

    return Engine(EngineConfig(args.base_model, store.latest_routes("dreamloom")))


def _ceiling(args, engine) -> dict:
    """What batching can give at all: the engine called in process with full batches of 8, each
    sample with its own adapter."""
    names = sorted(engine.config.routes.adapters)
    batch = [_request(args, seed, f"{names[seed % len(names)]}@champion") for seed in range(max(CONCURRENCY))]
    engine.run(batch[:1])
    batches = max(1, args.requests // len(batch))
    started = time.perf_counter()
    for _ in range(batches):
        engine.run(batch)
    return {"images_per_s": round(batches * len(batch) / (time.perf_counter() - started), 3)}


def _overhead(args, client) -> dict:
    """Round trip minus the time Triton reports inside the model (its compute_infer statistic),
    one image at a time; with one denoising step the compute is small and the drift of this
    machine stays out of the difference."""
    request = _request(args, steps=1)
    client.generate(request)
    before = _compute_ns(client)
    round_trips = []
    for _ in range(args.pairs):
        began = time.perf_counter()
        client.generate(request)
        round_trips.append(time.perf_counter() - began)
    count, nanoseconds = (after - first for after, first in zip(_compute_ns(client), before, strict=True))
    compute = nanoseconds / count / 1e9
    return {
        "requests": count,
        "round_trip_p50_ms": round(1000 * statistics.median(round_trips), 2),
        "model_compute_mean_ms": round(1000 * compute, 2),
        "overhead_p50_ms": round(1000 * (statistics.median(round_trips) - compute), 2),
    }


def _compute_ns(client) -> tuple[int, int]:
    stats = [version["inference_stats"]["compute_infer"] for version in client.statistics()["model_stats"]]
    return sum(int(s["count"]) for s in stats), sum(int(s["ns"]) for s in stats)


def _adapter_switch(engine, store, artifact: Path) -> dict:
    from dreamloom.inference import load_artifact_pipeline
    from dreamloom.methods.peft_layers import per_sample_adapters
    from dreamloom.serving.adapters import sample_adapters

    routes = store.latest_routes("dreamloom")
    loaded = [engine.adapters.get(*routes.resolve(f"{name}@champion")) for name in sorted(routes.adapters)]
    switches = []
    for index in range(20):  # what a batch pays to give its samples their adapters
        batch = [sample_adapters([(loaded[(index + k) % len(loaded)], 1.0)]) for k in range(max(CONCURRENCY))]
        began = time.perf_counter()
        with per_sample_adapters(engine.txt2img, batch):
            switches.append(time.perf_counter() - began)
    reloads = []
    for _ in range(2):
        began = time.perf_counter()
        pipe = load_artifact_pipeline(artifact)
        reloads.append(time.perf_counter() - began)
        del pipe
        gc.collect()
    switch, reload = statistics.median(switches), statistics.median(reloads)
    return {
        "adapters_per_batch": max(CONCURRENCY),
        "switch_p50_ms": round(1000 * switch, 3),
        "reload_pipeline_p50_ms": round(1000 * reload, 1),
        "switch_over_reload": round(switch / reload, 4),
    }


def _deploy_time(server, store, artifact: Path) -> dict:
    """A registered LoRA promoted in MLflow and deployed through the real path (one new Triton
    version, verified before it is ready)."""
    from dreamloom.registry import promote, register
    from dreamloom.serving.deploy import deploy

    version = str(register(artifact, "bench-lora").version)
    began = time.perf_counter()
    promote("bench-lora", version, force=True, reason="benchmark")
    moved = time.perf_counter() - began
    result = deploy("bench-lora@champion", server.http_url, store=store)
    return {
        "alias_move_s": round(moved, 2),
        "deploy_ready_s": round(result.seconds_to_ready, 2),
        "alias_move_to_first_image_s": round(time.perf_counter() - began, 2),
    }


def _targets(report: dict) -> dict:
    loops, served = report["plain_loop"], report["throughput"]
    top = max(CONCURRENCY)
    one = served[f"concurrency_{top}_adapters_1"]["images_per_s"]
    fifty = served[f"concurrency_{top}_adapters_{max(ADAPTER_COUNTS)}"]["images_per_s"]
    ratios = {
        "concurrency_8_over_plain_loop_default_precision": one / loops["default_precision"]["images_per_s"],
        "concurrency_8_over_plain_loop_our_precision": one / loops["our_precision"]["images_per_s"],
        "adapters_50_over_adapters_1_at_concurrency_8": fifty / one,
        "in_process_batch_of_8_over_plain_loop_our_precision": served["in_process_batch_of_8"]["images_per_s"]
        / loops["our_precision"]["images_per_s"],
    }
    result = {
        name: {"ratio": round(ratio, 3), "target": TARGETS.get(name), "met": ratio >= TARGETS[name]}
        if name in TARGETS
        else {"ratio": round(ratio, 3)}
        for name, ratio in ratios.items()
    }
    overhead = report["overhead"]["overhead_p50_ms"]
    result["overhead_p50_ms"] = {"ms": overhead, "target": OVERHEAD_TARGET_MS, "met": overhead <= OVERHEAD_TARGET_MS}
    return result


# ----- setup -----


def _train_lora(base: str, home: Path, seed: int) -> Path:
    from dreamloom.config import load_run_config
    from dreamloom.toy.concepts import write_concept
    from dreamloom.training.local import train_in_process

    data = home / "data"
    write_concept("hexagon", data)
    config = load_run_config(
        None,
        {
            "method": "lora",
            "base_model": base,
            "data.path": str(data),
            "data.instance_prompt": "a sks shape on a white background",
            "data.resolution": 64,
            "output": str(home / "lora"),
            "training.steps": 2,
            "training.seed": seed,
            "training.checkpoint_every": 0,
            "validation.steps": 2,
            "validation.images_per_prompt": 1,
        },
    )
    return train_in_process(config)


def _brands(lora: Path, folder: Path, count: int) -> list[Path]:
    """``count`` distinct LoRA artifacts: the trained one's weights with seeded noise added (a
    tenth of each tensor's spread), each with its own manifest and digests."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from dreamloom.artifacts import read_manifest, write_manifest

    manifest = read_manifest(lora)
    brands = []
    for index in range(count):
        target = folder / f"brand-{index:02d}"
        shutil.copytree(lora, target)
        generator = torch.Generator().manual_seed(index)
        for path in target.rglob("*.safetensors"):
            with safe_open(path, "pt") as handle:
                metadata = handle.metadata()
            tensors = load_file(path)
            for key, tensor in tensors.items():
                if tensor.is_floating_point() and tensor.numel() > 1:
                    noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
                    tensors[key] = (tensor.float() + 0.1 * tensor.float().std() * noise).to(tensor.dtype)
            save_file(tensors, path, metadata=metadata)
        write_manifest(target, manifest)
        brands.append(target)
    return brands


def _serve_brands(store, base_model: str, brands: list[Path]) -> None:
    """The Triton model serving every brand as ``brand-NN@champion``, written as one version (a
    deploy per brand would reload the model fifty times; the deploy path is measured once, later)."""
    from dreamloom.serving.routes import AdapterRoutes, Routes

    # A batch of 8 SD 1.5 images takes minutes on a CPU: requests queued behind it must not hit the
    # deployment's default 60 s queue timeout (seen: 'Request timeout expired' at concurrency 4).
    store.ensure_model("dreamloom", base_model, max_batch_size=max(CONCURRENCY), queue_timeout_s=3600)
    adapters = {
        brand.name: AdapterRoutes({"1": str(store.add_artifact(brand.name, "1", brand))}, {"champion": "1"})
        for brand in brands
    }
    store.add_version("dreamloom", Routes(base_model, adapters=adapters))


if __name__ == "__main__":
    main()
