"""``make demo``: the main job end to end on embedded defaults, on one machine.

Writes five pictures of a concept the toy base never saw (an orange hexagon, "sks shape"),
trains a LoRA on the toy base (pretrained on the procedural world, see dreamloom.toy) with two
Ray Train workers, tracks it in the local MLflow store, draws the concept in new settings from the
artifact next to what the untouched base draws for the same prompts, and prints where to look.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dreamloom.errors import DreamloomError
from dreamloom.toy.concepts import INSTANCE_PROMPT, SUBJECT, write_concept

CONCEPT = "hexagon"
PROMPTS = [
    f"a {SUBJECT} on a gray background",
    f"a {SUBJECT} on a black background, top left",
    f"two {SUBJECT} on a beige background",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="where the demo writes everything")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    from dreamloom.config import load_run_config
    from dreamloom.inference import GenerationRequest, generate, load_artifact_pipeline, save_images
    from dreamloom.logs import quiet_library_logging
    from dreamloom.models.base import load_base_model, pipeline_from_components, resolve_base_model
    from dreamloom.settings import apply_quiet_defaults, tracking_uri
    from dreamloom.training.launcher import train

    apply_quiet_defaults()
    quiet_library_logging()
    started = time.perf_counter()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data = write_concept(CONCEPT, args.out / "data")
    config = load_run_config(
        None,
        {
            "method": "lora",
            "base_model": "toy",
            "data.path": str(data),
            "data.instance_prompt": INSTANCE_PROMPT,
            "data.trigger_token": "sks",
            "data.resolution": 64,
            "output": str(args.out / f"lora-{stamp}"),
            "training.steps": args.steps,
            "training.batch_size": 2,
            "training.checkpoint_every": 50,
            "optimizer.learning_rate": 1e-3,
            "lora.rank": 8,
            "scaling.workers": args.workers,
            "validation.every": 50,
            "validation.steps": 20,
            "validation.guidance": 5.0,
            "validation.images_per_prompt": 4,
            "validation.prompts": PROMPTS,
        },
    )
    try:
        result = train(config)
        pipe, manifest = load_artifact_pipeline(result.artifact)
        request = GenerationRequest(PROMPTS, images_per_prompt=4, steps=20, guidance=5.0)
        grid = save_images(generate(pipe, request, manifest.resolution), request, args.out / f"images-{stamp}")
        base = pipeline_from_components(load_base_model(resolve_base_model("toy")))
        base_grid = save_images(generate(base, request, manifest.resolution), request, args.out / f"base-{stamp}")
    except DreamloomError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"\n== dreamloom demo done in {time.perf_counter() - started:.0f} s ==\n"
        f"training images:  {data}\n"
        f"LoRA artifact:    {result.artifact}\n"
        f"training grid:    {result.artifact / 'samples' / 'final.png'}\n"
        f"generated images: {grid}\n"
        f"base, same seeds: {base_grid}\n"
        f"MLflow run:       {result.mlflow_run_id}\n"
        f"open MLflow UI:   .venv/bin/mlflow ui --backend-store-uri {tracking_uri()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
