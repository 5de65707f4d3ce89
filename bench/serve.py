"""Serving speed through a real tritonserver, against the same pipeline called in a plain loop.

In one process, on one base (default ``tiny``, 64 px):

- ``throughput``: images/s at concurrency 1, 4 and 8 through Triton (dynamic batching merges
  concurrent requests into one pipeline call), against the baseline: the same engine called once
  per image in a plain Python loop; p50/p95 latency per concurrency; and the ceiling batching can
  reach at all, the engine called in process with full batches of 8.
- ``overhead``: round trip through Triton minus the time Triton reports inside the model
  (``compute_infer``), one-step images one at a time (what HTTP, queueing and the python
  backend's transfer add).
- ``adapter_switch``: switching between two cached LoRAs on the loaded engine, against loading a
  pipeline with the adapter from disk (what serving without an adapter cache would pay).
- ``deploy``: from moving the alias in MLflow to the first image from the new version.

Prints JSON; ``--out FILE`` also writes it.

    .venv/bin/python bench/serve.py
    .venv/bin/python bench/serve.py --base-model toy --requests 48
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from report import emit  # bench/report.py: these scripts run with bench/ on sys.path

CONCURRENCY = (1, 4, 8)


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
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per image")
    parser.add_argument("--requests", type=int, default=32, help="images per throughput measurement")
    parser.add_argument("--pairs", type=int, default=20, help="interleaved pairs for the overhead")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    return parser.parse_args()


def run(args, home: Path) -> dict:
    from dreamloom.serving.client import ServingClient
    from dreamloom.serving.deploy import deploy
    from dreamloom.serving.engine import Engine, EngineConfig
    from dreamloom.serving.repository import ServingStore
    from dreamloom.serving.server import TritonServer, free_port

    loras = {name: _train_lora(args.base_model, home, name, seed) for seed, name in enumerate("abc")}
    versions = {name: _register(artifact, "bench-lora") for name, artifact in loras.items()}
    _promote("bench-lora", versions["a"])
    store = ServingStore(home / "store")
    store.ensure_model("dreamloom", args.base_model, max_batch_size=8)
    server = TritonServer.for_store(store, ["dreamloom"], free_port(), free_port(), free_port())
    report = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
        "setup": {"base_model": args.base_model, "steps": args.steps, "requests": args.requests},
    }
    with server:
        client = ServingClient(server.http_url, admin_key=store.admin_key())
        deploy("bench-lora@champion", server.http_url, store=store)
        deploy("bench-lora", server.http_url, version=versions["b"], store=store)
        engine = Engine(EngineConfig(args.base_model, store.latest_routes("dreamloom")))
        report["throughput"] = _throughput(args, client, engine)
        report["overhead"] = _overhead(args, client)
        report["adapter_switch"] = _adapter_switch(engine, store, loras["a"])
        report["deploy"] = _deploy_time(server, store, versions["c"])
        client.close()
    return report


# ----- measurements -----


def _request(args, seed: int = 0, adapter: str = ""):
    from dreamloom.serving.protocol import ImageRequest

    return ImageRequest("a red circle on a white background", seed=seed, steps=args.steps, adapter=adapter)


def _throughput(args, client, engine) -> dict:
    client.generate(_request(args))  # warm both
    engine.run([_request(args)])
    started = time.perf_counter()
    for seed in range(args.requests):
        engine.run([_request(args, seed)])
    baseline = args.requests / (time.perf_counter() - started)
    batch = [_request(args, seed) for seed in range(max(CONCURRENCY))]
    started = time.perf_counter()
    for _ in range(args.requests // len(batch)):
        engine.run(batch)
    ceiling = len(batch) * (args.requests // len(batch)) / (time.perf_counter() - started)
    result = {
        "baseline_loop_images_per_s": round(baseline, 2),
        # what batching can give at all: the engine called in process with full batches
        "in_process_batch_of_8_images_per_s": round(ceiling, 2),
        "in_process_batch_ratio_to_loop": round(ceiling / baseline, 2),
    }
    for concurrency in CONCURRENCY:
        latencies: list[float] = []

        def one(seed: int, sink=latencies) -> None:
            began = time.perf_counter()
            client.generate(_request(args, seed))  # a connection per thread
            sink.append(time.perf_counter() - began)

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(args.requests)))
        rate = args.requests / (time.perf_counter() - started)
        latencies.sort()
        result[f"concurrency_{concurrency}"] = {
            "images_per_s": round(rate, 2),
            "ratio_to_loop": round(rate / baseline, 2),
            "latency_p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
            "latency_p95_ms": round(1000 * latencies[int(len(latencies) * 0.95) - 1], 1),
        }
    return result


def _overhead(args, client) -> dict:
    """Round trip minus the time Triton reports inside the model (its compute_infer statistic),
    one image at a time; with one denoising step the compute is small and the drift of this
    machine stays out of the difference."""
    request = dataclasses.replace(_request(args), steps=1)
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
    loaded = [
        engine.adapters.get(*routes.resolve(f"bench-lora/{v}")) for v in sorted(routes.adapters["bench-lora"].versions)
    ]
    switches = []
    for index in range(20):  # what a batch pays to give its samples their adapters
        began = time.perf_counter()
        with per_sample_adapters(engine.txt2img, [sample_adapters([(loaded[index % len(loaded)], 1.0)])]):
            switches.append(time.perf_counter() - began)
    reloads = []
    for _ in range(3):
        began = time.perf_counter()
        load_artifact_pipeline(artifact)
        reloads.append(time.perf_counter() - began)
    switch, reload = statistics.median(switches), statistics.median(reloads)
    return {
        "adapters": len(loaded),
        "switch_p50_ms": round(1000 * switch, 3),
        "reload_pipeline_p50_ms": round(1000 * reload, 1),
        "switch_over_reload": round(switch / reload, 4),
    }


def _deploy_time(server, store, version: str) -> dict:
    from dreamloom.serving.deploy import deploy

    began = time.perf_counter()
    _promote("bench-lora", version)
    moved = time.perf_counter() - began
    result = deploy("bench-lora@champion", server.http_url, store=store)
    return {
        "alias_move_s": round(moved, 2),
        "deploy_ready_s": round(result.seconds_to_ready, 2),
        "alias_move_to_first_image_s": round(time.perf_counter() - began, 2),
    }


# ----- setup -----


def _train_lora(base: str, home: Path, name: str, seed: int) -> Path:
    from dreamloom.config import load_run_config
    from dreamloom.training.local import train_in_process

    data = home / "data"
    if not data.is_dir():
        from dreamloom.toy.concepts import write_concept

        write_concept("hexagon", data)
    config = load_run_config(
        None,
        {
            "method": "lora",
            "base_model": base,
            "data.path": str(data),
            "data.instance_prompt": "a sks shape on a white background",
            "data.resolution": 64,
            "output": str(home / f"lora-{name}"),
            "training.steps": 3,
            "training.seed": seed,
            "training.checkpoint_every": 0,
            "validation.steps": 2,
            "validation.images_per_prompt": 1,
        },
    )
    return train_in_process(config)


def _register(artifact: Path, name: str) -> str:
    from dreamloom.registry import register

    return str(register(artifact, name).version)


def _promote(name: str, version: str) -> None:
    from dreamloom.registry import promote

    promote(name, version, force=True, reason="benchmark")


if __name__ == "__main__":
    main()
