"""Seconds per serving mode through the real tritonserver: one image each of txt2img, img2img and
inpaint on one base at one size, with the base served in a chosen precision. Each mode is asked
twice and the second answer timed (the first pays for the pipeline's warm-up). The images go to
``--images``: what a person looks at, beside the numbers. ``--controlnet ARTIFACT`` adds the
ControlNet mode: the artifact (a ControlNet trained on the same base) is registered in MLflow,
promoted and deployed as users deploy it, and follows the scene's edges.

    .venv/bin/python bench/modes.py --base-model sdxl-random --size 256 --steps 4 --precision bf16 --images out/
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from report import emit  # bench/report.py: these scripts run with bench/ on sys.path

from dreamloom.models.precision import SERVING_PRECISIONS


def main() -> None:
    args = _parse()
    if "DREAMLOOM_HOME" in os.environ:
        _measure(args)
        return
    # A registry and a Triton store of a real architecture are ~10 GB: gone when the bench ends.
    with tempfile.TemporaryDirectory(prefix="dreamloom-bench-modes-") as scratch:
        os.environ["DREAMLOOM_HOME"] = scratch
        _measure(args)


def _measure(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    from dreamloom.logs import quiet_library_logging

    quiet_library_logging()
    report = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
        "setup": {"base_model": args.base_model, "size": args.size, "steps": args.steps, "precision": args.precision},
        "seconds": _serve_each_mode(args),
    }
    emit(report, args.out)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default="tiny")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--precision", default="auto", choices=SERVING_PRECISIONS)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--images", type=Path, help="folder for one PNG per mode")
    parser.add_argument("--controlnet", type=Path, help="a ControlNet artifact on the same base: adds that mode")
    parser.add_argument("--out", type=Path)
    return parser.parse_args()


def _scene(size: int) -> tuple[Image.Image, Image.Image]:
    scene = Image.new("RGB", (size, size), (230, 225, 210))
    draw = ImageDraw.Draw(scene)
    draw.ellipse((size // 4, size // 4, size * 3 // 4, size * 3 // 4), fill=(200, 40, 40))
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle((size // 3, size // 3, size * 2 // 3, size * 2 // 3), fill=255)
    return scene, mask


def _serve_each_mode(args) -> dict:
    from dreamloom.serving.client import ServingClient
    from dreamloom.serving.protocol import ImageRequest, encode_image
    from dreamloom.serving.repository import ServingStore
    from dreamloom.serving.server import TritonServer, free_port

    store = ServingStore(Path(os.environ["DREAMLOOM_HOME"]) / "store")
    # A ControlNet counts against the adapter budget by its file (an SDXL one is 4.7 GB in fp32).
    budget = 8192 if args.controlnet else 512
    store.ensure_model(
        "dreamloom", args.base_model, max_batch_size=1, precision=args.precision, adapter_budget_mib=budget
    )
    scene, mask = _scene(args.size)
    modes = {
        "txt2img": {},
        "img2img": {"init_image": encode_image(scene)},
        "inpaint": {"init_image": encode_image(scene), "mask": encode_image(mask)},
    }
    seconds = {}
    server = TritonServer.for_store(store, ["dreamloom"], free_port(), free_port(), free_port())
    started = time.perf_counter()
    server.start(timeout_s=1800)
    seconds["triton_ready"] = round(time.perf_counter() - started, 1)
    try:
        adapter = {}
        if args.controlnet:
            modes["controlnet"] = {"control_image": encode_image(_edges(scene))}
            adapter["controlnet"] = _deploy_controlnet(args.controlnet, server, store)
        with ServingClient(server.http_url) as client:
            for mode, extra in modes.items():
                request = ImageRequest(
                    "a product photo of a red ball on a table",
                    adapter=adapter.get(mode, ""),
                    mode=mode,
                    width=args.size,
                    height=args.size,
                    steps=args.steps,
                    seed=1,
                    **extra,
                )
                client.generate(request)
                began = time.perf_counter()
                image = client.generate(request)
                seconds[mode] = round(time.perf_counter() - began, 2)
                if args.images:
                    args.images.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(args.images / f"{mode}.png")
    finally:
        server.stop()
    return seconds


def _edges(scene: Image.Image) -> Image.Image:
    from dreamloom.usecases.pictures import condition

    return condition(scene, "canny", scene.size)


def _deploy_controlnet(artifact: Path, server, store) -> str:
    from dreamloom.registry import promote, register
    from dreamloom.serving.deploy import deploy

    version = str(register(artifact, "bench-controlnet").version)
    promote("bench-controlnet", version, force=True, reason="benchmark")
    deploy("bench-controlnet@champion", server.http_url, store=store)
    return "bench-controlnet@champion"


if __name__ == "__main__":
    main()
