"""What channels-last and torch.compile give a served base, in one process, against eager.

For each variant (eager, channels-last, compiled: ``EngineConfig(compile=True)`` with its
warm-up), the engine is built on the base with no adapters and measured: the warm-up's seconds,
the UNet's step at batch 2 (one image with classifier-free guidance) and at batch 8, and one
image end to end through ``Engine.run``. Ratios are against eager, measured in the same run.

Prints JSON; ``--out FILE`` also writes it.

    .venv/bin/python bench/compile.py --base-model sd15-random --size 256 --steps 20
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from report import emit  # bench/report.py: these scripts run with bench/ on sys.path

VARIANTS = {"eager": {}, "channels_last": {"channels_last": True}, "compiled": {"compile": True}}


def main() -> None:
    args = _parse()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    from dreamloom.logs import quiet_library_logging

    quiet_library_logging()
    results = {name: _measure(args, options) for name, options in VARIANTS.items()}
    eager = results["eager"]
    for result in results.values():
        for key in ("unet_step_batch_2_s", "unet_step_batch_8_s", "image_s"):
            result[f"{key}_speedup_over_eager"] = round(eager[key] / result[key], 3)
    report = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
        "setup": {"base_model": args.base_model, "size": args.size, "steps": args.steps, "precision": "auto"},
        "variants": results,
    }
    emit(report, args.out)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default="tiny")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path)
    return parser.parse_args()


def _measure(args, options: dict) -> dict:
    from dreamloom.serving.engine import Engine, EngineConfig
    from dreamloom.serving.protocol import ImageRequest
    from dreamloom.serving.routes import Routes

    engine = Engine(EngineConfig(args.base_model, Routes(args.base_model), **options))
    began = time.perf_counter()
    engine.warm_up()
    warm_up = time.perf_counter() - began
    result = {"compiled": engine.compiled, "warm_up_s": round(warm_up, 1), "dtype": str(engine.txt2img.unet.dtype)}
    for batch in (2, 8):
        result[f"unet_step_batch_{batch}_s"] = _unet_step(engine, args, batch)
    request = ImageRequest("a photo of a red sneaker", steps=args.steps, width=args.size, height=args.size)
    engine.run([request])
    images = []
    for seed in range(args.repeats):
        began = time.perf_counter()
        engine.run([ImageRequest(request.prompt, seed=seed, steps=args.steps, width=args.size, height=args.size)])
        images.append(time.perf_counter() - began)
    result["image_s"] = round(statistics.median(images), 3)
    del engine
    gc.collect()
    return result


@torch.inference_mode()
def _unet_step(engine, args, batch: int) -> float:
    unet = engine.txt2img.unet
    side = args.size // engine.txt2img.vae_scale_factor
    latents = torch.randn(batch, unet.config.in_channels, side, side, dtype=unet.dtype)
    timesteps = torch.full((batch,), 500)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, dtype=unet.dtype)
    extra = {}
    if unet.config.addition_embed_type == "text_time":  # SDXL: pooled text and size conditioning
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, 1280, dtype=unet.dtype),
            "time_ids": torch.tensor([[args.size, args.size, 0, 0, args.size, args.size]] * batch, dtype=unet.dtype),
        }
    unet(latents, timesteps, context, **extra)
    steps = []
    for _ in range(args.repeats):
        began = time.perf_counter()
        unet(latents, timesteps, context, **extra)
        steps.append(time.perf_counter() - began)
    return round(statistics.median(steps), 3)


if __name__ == "__main__":
    main()
