"""Training-step speed and memory: dreamloom's loop against two references, in one process.

Two sections, both on the same base, data, batch and resolution.

``compare`` (lora, dreambooth): four variants of one training step:

- ``ours``: ``dreamloom.training.trainer.Trainer.train_step`` as a run uses it by default
  (cached latents and text embeddings, fused AdamW, eager);
- ``ours_compiled``: the same with ``training.compile: true`` (``torch.compile`` on the UNet);
- ``baseline``: the structure of diffusers' ``train_dreambooth_lora.py`` / ``train_dreambooth.py``
  step: images transformed and captions tokenized by the dataset each step, the VAE and the text
  encoder run every step, then UNet forward/backward, clipping, AdamW, scheduler;
- ``floor``: the compute floor: UNet forward + backward only, on fixed latents, embeddings,
  noise and timesteps, eager, no optimizer.

The machine's speed drifts by tens of percent over seconds, so the variants are timed
interleaved, one step each per round (in shuffled order), and the report gives the median of the
per-round ratios.

``methods`` (all seven): each method's step time (all methods interleaved the same way), peak
memory, the size of the artifact it writes on this base, and the artifact size and training
memory computed for SD 1.5 and SDXL from their real architectures (``dreamloom.sizing``).

Peak memory is measured in a fresh subprocess per variant (peak RSS on CPU, peak allocated on
CUDA). Prints JSON and a markdown table; ``--out`` also writes the JSON to a file.

    .venv/bin/python bench/train.py                                  # everything
    .venv/bin/python bench/train.py --compare lora --no-methods --rounds 30 --no-memory
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

VARIANTS = ("ours", "ours_compiled", "baseline", "floor")
ALL_METHODS = ("lora", "dreambooth", "dreambooth-lora", "textual-inversion", "pivotal", "hypernetwork", "controlnet")


def main() -> None:
    args = _parse()
    os.environ.setdefault("DREAMLOOM_HOME", str(Path(tempfile.gettempdir()) / "dreamloom-bench"))
    torch.set_num_threads(args.threads)
    from dreamloom.logs import quiet_library_logging

    quiet_library_logging()
    data = _draw_data(Path(os.environ["DREAMLOOM_HOME"]) / "bench-data")
    if args.memory_probe:
        print(json.dumps(_memory_probe(args, data, *args.memory_probe)))
        return
    report = {
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": args.threads,
            "device": args.device,
        },
        "setup": {
            "base_model": args.base_model,
            "resolution": args.resolution,
            "batch_size": args.batch_size,
            "rounds": args.rounds,
            "warmup": args.warmup,
        },
        "compare": {method: _measure(args, data, method) for method in args.compare},
    }
    if args.methods:
        report["methods"] = _methods_table(args, data)
    text = json.dumps(report, indent=2)
    print(text)
    if args.methods:
        print(_markdown(report["methods"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", nargs="*", default=["lora", "dreambooth"], choices=["lora", "dreambooth"])
    parser.add_argument("--no-methods", dest="methods", action="store_false", help="skip the all-methods table")
    parser.add_argument("--base-model", default="tiny")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=60, help="interleaved timed steps per variant")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--memory-probe", nargs=2, metavar=("VARIANT", "METHOD"), help=argparse.SUPPRESS)
    return parser.parse_args()


# ----- the three variants -----


def _job(args, data: Path, method: str, workdir: Path, compile_unet: bool = False):
    from dreamloom.config import load_run_config
    from dreamloom.training.preflight import plan_job

    config = load_run_config(
        None,
        {
            "method": method,
            "base_model": args.base_model,
            "data.path": str(data),
            "data.instance_prompt": "a photo of <concept>",  # <concept>: the embedding methods' token
            "data.resolution": args.resolution,
            "output": str(workdir / method),
            "prior.enabled": False,
            "training.batch_size": args.batch_size,
            "training.steps": 100_000,
            "training.compile": compile_unet,
            "training.mixed_precision": "bf16" if args.device == "cuda" else "no",
        },
    )
    return plan_job(config)


class Ours:
    compiled = False

    def __init__(self, args, data, method, workdir):
        from dreamloom.training.trainer import Trainer

        self.trainer = Trainer(_job(args, data, method, workdir, self.compiled), device=args.device)
        self.count = 0

    def step(self) -> None:
        self.count += 1
        self.trainer.train_step(self.count)


class OursCompiled(Ours):
    compiled = True


class ExampleStyleBaseline:
    """One step the way diffusers' DreamBooth(-LoRA) examples do it (no accelerate wrapper)."""

    def __init__(self, args, data, method, workdir):
        from diffusers.optimization import get_scheduler
        from peft import LoraConfig

        from dreamloom.data.prepare import PreparedDataset
        from dreamloom.models.base import load_base_model

        job = _job(args, data, method, workdir)
        self.model = load_base_model(job.base_model, args.device)
        self.device = torch.device(args.device)
        unet = self.model.unet
        if method == "lora":
            unet.add_adapter(
                LoraConfig(
                    r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"]
                )
            )
        else:
            unet.requires_grad_(True)
        unet.train()
        self.params = [p for p in unet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        self.lr_scheduler = get_scheduler("constant", optimizer=self.optimizer)
        dataset = PreparedDataset.load(Path(job.dataset_root))
        self.images = [Image.open(dataset.root / item.image).convert("RGB") for item in dataset.items]
        self.resolution, self.batch_size = args.resolution, args.batch_size
        self.prompt = "a photo of sks ball"
        self.index = 0

    def _example(self):
        # DreamBoothDataset.__getitem__: resize, center crop, to tensor, normalize; tokenize the prompt.
        image = self.images[self.index % len(self.images)]
        self.index += 1
        image = image.resize((self.resolution, self.resolution), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        tokenizer = self.model.tokenizers[0]
        ids = tokenizer(
            self.prompt,
            truncation=True,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids
        return (pixels - 0.5) / 0.5, ids

    def step(self) -> None:
        examples = [self._example() for _ in range(self.batch_size)]
        pixel_values = torch.stack([e[0] for e in examples]).to(self.device)
        input_ids = torch.cat([e[1] for e in examples]).to(self.device)
        vae, unet, scheduler = self.model.vae, self.model.unet, self.model.noise_scheduler
        model_input = vae.encode(pixel_values).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(model_input)
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (model_input.shape[0],), device=self.device
        ).long()
        noisy_model_input = scheduler.add_noise(model_input, noise, timesteps)
        encoder_hidden_states = self.model.text_encoders[0](input_ids)[0]
        model_pred = unet(noisy_model_input, timesteps, encoder_hidden_states, return_dict=False)[0]
        loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad()
        loss.item()  # the example logs the loss every step


class ComputeFloor:
    """UNet forward + backward on fixed inputs: what any loop must at least spend."""

    def __init__(self, args, data, method, workdir):
        baseline = ExampleStyleBaseline(args, data, method, workdir)  # same trainable setup
        self.unet, self.params = baseline.model.unet, baseline.params
        generator = torch.Generator().manual_seed(0)
        side = args.resolution // baseline.model.vae_scale_factor
        device = torch.device(args.device)
        shape = (args.batch_size, baseline.model.unet.config.in_channels, side, side)
        self.latents = torch.randn(shape, generator=generator).to(device)
        self.noise = torch.randn(shape, generator=generator).to(device)
        self.timesteps = torch.randint(0, 1000, (args.batch_size,), generator=generator).to(device)
        with torch.no_grad():
            self.embeddings = baseline.model.encode_text([baseline.prompt] * args.batch_size)

    def step(self) -> None:
        pred = self.unet(self.latents, self.timesteps, encoder_hidden_states=self.embeddings.embeds).sample
        F.mse_loss(pred.float(), self.noise.float()).backward()
        for parameter in self.params:
            parameter.grad = None


BUILDERS = {"ours": Ours, "ours_compiled": OursCompiled, "baseline": ExampleStyleBaseline, "floor": ComputeFloor}


# ----- measuring -----


def _measure(args, data: Path, method: str) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        variants = {name: BUILDERS[name](args, data, method, Path(workdir)) for name in VARIANTS}
        for variant in variants.values():
            for _ in range(args.warmup):
                variant.step()
        seconds = {name: [] for name in VARIANTS}
        order = list(VARIANTS)
        for _ in range(args.rounds):
            random.shuffle(order)
            for name in order:
                _sync(args.device)
                started = time.perf_counter()
                variants[name].step()
                _sync(args.device)
                seconds[name].append(time.perf_counter() - started)
    result = {f"{name}_step_ms": round(statistics.median(times) * 1000, 2) for name, times in seconds.items()}
    for ours in ("ours", "ours_compiled"):
        result[f"{ours}_vs_baseline"] = _paired_ratio(seconds[ours], seconds["baseline"])
        result[f"{ours}_vs_floor"] = _paired_ratio(seconds[ours], seconds["floor"])
    result["baseline_vs_floor"] = _paired_ratio(seconds["baseline"], seconds["floor"])
    if not args.no_memory:
        result["peak_memory_mib"] = {name: _memory_in_subprocess(args, name, method) for name in VARIANTS}
    return result


def _paired_ratio(ours: list[float], reference: list[float]) -> dict:
    ratios = sorted(a / b for a, b in zip(ours, reference, strict=True))
    quartile = len(ratios) // 4
    return {
        "median": round(statistics.median(ratios), 3),
        "iqr": [round(ratios[quartile], 3), round(ratios[-quartile - 1], 3)],
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _memory_in_subprocess(args, variant: str, method: str) -> dict:
    command = [sys.executable, __file__, "--memory-probe", variant, method, "--threads", str(args.threads)]
    command += [
        "--base-model",
        args.base_model,
        "--resolution",
        str(args.resolution),
        "--batch-size",
        str(args.batch_size),
    ]
    command += ["--device", args.device]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _memory_probe(args, data: Path, variant: str, method: str) -> dict:
    from dreamloom.training.precision import peak_rss_bytes

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    before = peak_rss_bytes()
    with tempfile.TemporaryDirectory() as workdir:
        runner = BUILDERS[variant](args, data, method, Path(workdir))
        for _ in range(args.warmup + 5):
            runner.step()
    peak = peak_rss_bytes()
    result = {"peak_rss": round(peak / 2**20, 1), "growth_over_imports": round((peak - before) / 2**20, 1)}
    if args.device.startswith("cuda"):
        result["peak_cuda_allocated"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def _draw_data(folder: Path, count: int = 8) -> Path:
    if len(list(folder.glob("*.png"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for index in range(count):
        image = Image.new("RGB", (96, 96), tuple(rng.randint(100, 255) for _ in range(3)))
        ImageDraw.Draw(image).ellipse((20, 20, 70, 70), fill=(200, 30, 30))
        image.save(folder / f"{index}.png")
    return folder


# ----- every method -----


def _methods_table(args, data: Path) -> dict:
    from dreamloom.sizing import Architecture, estimate

    with tempfile.TemporaryDirectory() as workdir:
        runners = {method: Ours(args, data, method, Path(workdir)) for method in ALL_METHODS}
        for runner in runners.values():
            for _ in range(args.warmup):
                runner.step()
        seconds = {method: [] for method in ALL_METHODS}
        order = list(ALL_METHODS)
        for _ in range(args.rounds):
            random.shuffle(order)
            for method in order:
                _sync(args.device)
                started = time.perf_counter()
                runners[method].step()
                _sync(args.device)
                seconds[method].append(time.perf_counter() - started)
        artifact_bytes = {
            method: _artifact_bytes(runner, Path(workdir) / f"artifact-{method}") for method, runner in runners.items()
        }
    bases = {name: Architecture.for_base(name) for name in ("sd15", "sdxl")}
    table = {}
    for method in ALL_METHODS:
        config = runners[method].trainer.config
        row = {
            "step_ms": round(statistics.median(seconds[method]) * 1000, 2),
            "artifact_bytes": artifact_bytes[method],
        }
        if not args.no_memory:
            row["peak_memory_mib"] = _memory_in_subprocess(args, "ours", method)
        for name, arch in bases.items():
            computed = estimate(arch, config)
            row[f"{name}_artifact_bytes"] = computed.artifact_bytes
            row[f"{name}_training_state_bytes"] = computed.training_state_bytes
        table[method] = row
    return table


def _artifact_bytes(runner: Ours, folder: Path) -> int:
    runner.trainer.save_artifact(folder)
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _markdown(table: dict) -> str:
    from dreamloom.sizing import human_bytes

    lines = [
        "| method | step (ms) | peak RSS (MiB) | artifact (tiny) | artifact SD 1.5 | artifact SDXL "
        "| train state SD 1.5 | train state SDXL |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, row in table.items():
        memory = row.get("peak_memory_mib", {}).get("peak_rss", "-")
        lines.append(
            f"| {method} | {row['step_ms']} | {memory} | {human_bytes(row['artifact_bytes'])} | "
            f"{human_bytes(row['sd15_artifact_bytes'])} | {human_bytes(row['sdxl_artifact_bytes'])} | "
            f"{human_bytes(row['sd15_training_state_bytes'])} | {human_bytes(row['sdxl_training_state_bytes'])} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
