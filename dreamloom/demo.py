"""``make demo``: the main job end to end on embedded defaults, on one machine.

Draws a small set of product photos of a made-up concept (a red sneaker-like shape on plain
backdrops), trains a LoRA on the offline tiny base with two Ray Train workers, tracks it in the
local MLflow store, renders sample images from the artifact, and prints where to look.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

from dreamloom.errors import DreamloomError

BACKDROPS = [(236, 236, 228), (200, 220, 240), (245, 225, 200), (220, 240, 220), (230, 215, 235), (250, 250, 250)]
TRIGGER = "sks"
INSTANCE_PROMPT = f"a photo of {TRIGGER} sneaker"


def draw_concept_images(folder: Path, count: int = 6, size: int = 96, seed: int = 7) -> Path:
    """Product shots of the demo concept: same object, different backdrops, positions and captions."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image = Image.new("RGB", (size, size), BACKDROPS[index % len(BACKDROPS)])
        draw = ImageDraw.Draw(image)
        dx, dy = rng.randint(-8, 8), rng.randint(-6, 6)
        draw.rounded_rectangle((18 + dx, 46 + dy, 80 + dx, 66 + dy), radius=9, fill=(205, 30, 40))  # body
        draw.rectangle((18 + dx, 62 + dy, 82 + dx, 70 + dy), fill=(245, 245, 245))  # sole
        draw.polygon([(22 + dx, 46 + dy), (40 + dx, 30 + dy), (52 + dx, 46 + dy)], fill=(170, 20, 30))  # collar
        for lace in range(3):
            x = 44 + dx + lace * 8
            draw.line((x, 48 + dy, x + 5, 56 + dy), fill=(255, 255, 255), width=2)
        image.save(folder / f"sneaker_{index}.png")
        backdrop = ["grey", "blue", "sand", "mint", "lilac", "white"][index % len(BACKDROPS)]
        (folder / f"sneaker_{index}.txt").write_text(f"{INSTANCE_PROMPT} on a {backdrop} background")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="where the demo writes everything")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    from dreamloom.config import load_run_config
    from dreamloom.inference import GenerationRequest, generate, load_artifact_pipeline, save_images
    from dreamloom.logs import quiet_library_logging
    from dreamloom.settings import apply_quiet_defaults, tracking_uri
    from dreamloom.training.launcher import train

    apply_quiet_defaults()
    quiet_library_logging()
    started = time.perf_counter()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data = draw_concept_images(args.out / "data")
    config = load_run_config(
        None,
        {
            "method": "lora",
            "base_model": "tiny",
            "data.path": str(data),
            "data.instance_prompt": INSTANCE_PROMPT,
            "data.trigger_token": TRIGGER,
            "data.resolution": 64,
            "output": str(args.out / f"lora-{stamp}"),
            "training.steps": args.steps,
            "training.batch_size": 2,
            "training.checkpoint_every": 20,
            "optimizer.learning_rate": 1e-3,
            "lora.rank": 8,
            "scaling.workers": args.workers,
            "validation.every": 20,
            "validation.steps": 10,
            "validation.prompts": [INSTANCE_PROMPT, f"{INSTANCE_PROMPT} on a blue background"],
        },
    )
    try:
        result = train(config)
        pipe, manifest = load_artifact_pipeline(result.artifact)
        request = GenerationRequest(
            [INSTANCE_PROMPT, f"an advert of {TRIGGER} sneaker, studio light"], images_per_prompt=4, steps=15
        )
        grid = save_images(generate(pipe, request, manifest.resolution), request, args.out / f"images-{stamp}")
    except DreamloomError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"\n== dreamloom demo done in {time.perf_counter() - started:.0f} s ==\n"
        f"training images:  {data}\n"
        f"LoRA artifact:    {result.artifact}\n"
        f"training grid:    {result.artifact / 'samples' / 'final.png'}\n"
        f"generated images: {grid}\n"
        f"MLflow run:       {result.mlflow_run_id}\n"
        f"open MLflow UI:   .venv/bin/mlflow ui --backend-store-uri {tracking_uri()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
