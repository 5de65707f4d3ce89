"""``make demo``: the main job end to end on embedded defaults, on one machine.

Writes five pictures of a concept the toy base never saw (an orange hexagon, "sks shape"), starts
a local Triton serving the toy base, and runs the personalize pipeline with KFP's local runner:
prepare the data, train a LoRA with two Ray Train workers, evaluate it, register it in MLflow,
gate it, promote it and deploy it to Triton. Then it asks the endpoint for an ad-style grid of
the concept in new settings, next to the untouched base with the same seeds, and prints where to
look.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from dreamloom.errors import DreamloomError
from dreamloom.toy.concepts import INSTANCE_PROMPT, SUBJECT, write_concept

CONCEPT = "hexagon"
AD_PROMPTS = [
    f"a {SUBJECT} on a gray background",
    f"a {SUBJECT} on a black background, top left",
    f"two {SUBJECT} on a beige background",
    f"a {SUBJECT} on a white background, bottom right",
]


def run_config(data: Path, steps: int, workers: int) -> dict:
    return {
        "method": "lora",
        "base_model": "toy",
        "data": {"path": str(data), "instance_prompt": INSTANCE_PROMPT, "trigger_token": "sks", "resolution": 64},
        "training": {"steps": steps, "batch_size": 2, "checkpoint_every": 100},
        "optimizer": {"learning_rate": 1e-3},
        "lora": {"rank": 8},
        "scaling": {"workers": workers},
        "validation": {
            "every": 100,
            "steps": 20,
            "guidance": 5.0,
            "images_per_prompt": 4,
            "prompts": AD_PROMPTS[:3],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="where the demo writes everything")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    from dreamloom.logs import quiet_library_logging
    from dreamloom.settings import apply_quiet_defaults

    apply_quiet_defaults()
    quiet_library_logging()
    try:
        return _demo(args)
    except DreamloomError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return exc.exit_code


def _demo(args) -> int:
    from dreamloom.serving.repository import ServingStore
    from dreamloom.serving.server import TritonServer, free_port
    from dreamloom.settings import tracking_uri, work_dir
    from pipelines.runner import pipeline_arguments, run_local

    started, stamp = time.perf_counter(), time.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    data = write_concept(CONCEPT, args.out / "data")
    config_file = args.out / "run.yaml"
    config_file.write_text(yaml.safe_dump(run_config(data.absolute(), args.steps, args.workers), sort_keys=False))
    store = ServingStore(work_dir() / "demo-serving")
    store.ensure_model("dreamloom", "toy")
    server = TritonServer.for_store(store, ["dreamloom"], free_port(), free_port(), free_port())
    print(f"[demo] starting Triton on {server.http_url} (store {store.root})", flush=True)
    with server.start(progress=True):
        print(f"\n[demo] running the personalize pipeline (KFP local runner) on {config_file}", flush=True)
        serving = {"triton_url": server.http_url, "serving_store": str(store.root)}
        arguments = pipeline_arguments(config_file, CONCEPT, eval_steps=20, eval_images_per_prompt=2, **serving)
        outputs = run_local(arguments, work_dir() / "kfp-local")
        grid = _ad_grid(server.http_url, args.out / f"ads-{stamp}.png")
    samples = sorted(outputs.rglob("evaluate/samples"), key=lambda path: path.stat().st_mtime)[-1]
    print(
        f"\n== dreamloom demo done in {time.perf_counter() - started:.0f} s ==\n"
        f"training images:  {data}\n"
        f"ad grid (Triton): {grid}  (top: {CONCEPT}@champion; bottom: the base, same seeds)\n"
        f"evaluation page:  {samples}  (the KFP UI shows it as the evaluate step's HTML output)\n"
        f"pipeline outputs: {outputs}\n"
        f"registered model: {CONCEPT} (dreamloom registry list {CONCEPT})\n"
        f"open MLflow UI:   .venv/bin/mlflow ui --backend-store-uri {tracking_uri()}"
    )
    return 0


def _ad_grid(url: str, path: Path) -> Path:
    """The concept in every ad prompt through the endpoint, above the base with the same seeds."""
    from diffusers.utils import make_image_grid
    from PIL import Image

    from dreamloom.serving.client import ServingClient
    from dreamloom.serving.protocol import ImageRequest

    requests = [
        ImageRequest(prompt, adapter=adapter, seed=seed, steps=20, guidance=5.0)
        for adapter in (f"{CONCEPT}@champion", "")
        for prompt in AD_PROMPTS
        for seed in range(2)
    ]
    print(f"[demo] generating {len(requests)} images through Triton", flush=True)
    with ServingClient(url) as client:
        images = [Image.fromarray(image) for image in client.generate_many(requests, concurrency=4, progress=True)]
    grid = make_image_grid(images, rows=2, cols=len(images) // 2)
    grid.resize((grid.width * 2, grid.height * 2), Image.Resampling.NEAREST).save(path)
    return path


if __name__ == "__main__":
    sys.exit(main())
