"""The README's use-case pictures and the augmentation numbers, made the way a user would make them:
a local Triton serving the toy base, adapters trained, registered, promoted and deployed, then
each use-case command through the endpoint. Writes docs/usecases/*.png and augment.json.

    .venv/bin/python tools/usecase_gallery.py [--out docs/usecases]   (about 10 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "usecases")
    args = parser.parse_args()
    from dreamloom.settings import apply_quiet_defaults

    apply_quiet_defaults()
    with tempfile.TemporaryDirectory(prefix="dreamloom-gallery-") as scratch:
        run(Path(scratch), args.out)


def run(scratch: Path, out: Path) -> None:
    import os

    os.environ["DREAMLOOM_HOME"] = str(scratch / "home")
    from dreamloom.cli import main as cli
    from dreamloom.registry import promote, register
    from dreamloom.serving.deploy import deploy
    from dreamloom.serving.repository import ServingStore
    from dreamloom.serving.server import TritonServer, free_port
    from dreamloom.toy import world
    from dreamloom.toy.augmentation import write_classes
    from dreamloom.toy.concepts import SUBJECT
    from dreamloom.toy.measure import layout_scenes
    from dreamloom.usecases.augment import augment_settings, run_experiment

    out.mkdir(parents=True, exist_ok=True)
    adapters = _train_adapters(scratch)
    store = ServingStore(scratch / "store")
    store.ensure_model("dreamloom", "toy", max_batch_size=8)
    server = TritonServer.for_store(store, ["dreamloom"], free_port(), free_port(), free_port())
    server.start(timeout_s=300)
    started = time.monotonic()
    try:
        url = server.http_url
        for name, artifact in adapters.items():
            version = register(artifact, name)
            promote(name, str(version.version), force=True, reason="gallery")
            deploy(f"{name}@champion", url, store=store)
        steps = ["--steps", "20", "--guidance", "5"]

        brief = scratch / "brief.yaml"
        scenes = ["on a gray background", "on a black background, top left", "on a beige background, bottom right"]
        brief.write_text(yaml.safe_dump({"subject": f"a {SUBJECT}", "scenes": scenes}))
        _check(
            cli(
                ["ad", "--url", url, "--product", "hexagon@champion", "--brief", str(brief), "--variants", "4",
                 "--out", str(scratch / "ad"), *steps]
            )
        )  # fmt: skip
        shutil.copy(scratch / "ad" / "contact-sheet.png", out / "ad.png")

        person = scratch / "person.png"
        world.render(world.Scene("circle", "blue", "plain", "white"), 3, layout=(32, 34, 26)).save(person)
        _check(
            cli(
                ["tryon", "--url", url, "--garment", "zigzag@champion", "--person", str(person), "--region", "upper",
                 "--prompt", f"a {SUBJECT} on a white background", "--variants", "3", "--out", str(scratch / "tryon"),
                 *steps]
            )
        )  # fmt: skip
        shutil.copy(scratch / "tryon" / "before-after.png", out / "tryon.png")

        caption, sketch_picture = layout_scenes(1, seed=21)[0]
        sketch = scratch / "sketch.png"
        sketch_picture.save(sketch)
        _check(
            cli(
                ["design", "--url", url, "--sketch", str(sketch), "--controlnet", "layout-canny@champion",
                 "--condition", "canny", "--prompt", caption, "--variants", "4", "--out", str(scratch / "design"),
                 *steps]
            )
        )  # fmt: skip
        _beside(
            [scratch / "design" / "inputs" / "condition.png", scratch / "design" / "contact-sheet.png"],
            out / "design.png",
        )

        frames = scratch / "frames"
        frames.mkdir()
        for index in range(4):
            scene = world.Scene("square", "red", "plain", "white")
            world.render(scene, 5, layout=(16 + 10 * index, 32, 10)).save(frames / f"frame_{index}.png")
        _check(
            cli(
                ["edit", "--url", url, "--source", str(frames), "--prompt", "a red square on a black background",
                 "--strength", "0.7", "--seed", "3", "--out", str(scratch / "edit"), *steps]
            )
        )  # fmt: skip
        originals = [Image.open(path) for path in sorted(frames.glob("*.png"))]
        from dreamloom.usecases.jobs import contact_sheet

        edited = [Image.open(path) for path in sorted((scratch / "edit" / "images").glob("*.png"))]
        contact_sheet([*originals, *edited], columns=4).save(out / "edit.png")

        train, held_out = write_classes(scratch / "classes" / "train", scratch / "classes" / "held-out", 5, 30)
        report = run_experiment(train, held_out, scratch / "augment", url, store, augment_settings("toy"))
        (out / "augment.json").write_text(json.dumps({**report.to_dict(), "dataset": "(scratch)"}, indent=1))
        _augment_sheet(scratch / "augment" / "dataset", out / "augment.png")
        print(json.dumps(report.to_dict(), indent=1))
    finally:
        server.stop()
    print(f"gallery written to {out} in {time.monotonic() - started:.0f} s")


def _train_adapters(scratch: Path) -> dict[str, Path]:
    from dreamloom.config import load_run_config
    from dreamloom.toy.concepts import INSTANCE_PROMPT, write_concept
    from dreamloom.toy.measure import write_layout_scenes
    from dreamloom.training.local import train_in_process

    scenes = write_layout_scenes(scratch / "scenes", 64, seed=99)
    plans = {
        "hexagon": ("lora", write_concept("hexagon", scratch / "hexagon"), {"lora.rank": 8}),
        "zigzag": ("lora", write_concept("zigzag", scratch / "zigzag"), {"lora.rank": 8}),
        "layout-canny": ("controlnet", scenes, {"controlnet.condition": "canny"}),
    }
    artifacts = {}
    for name, (method, data, extra) in plans.items():
        config = load_run_config(
            None,
            {
                "method": method,
                "base_model": "toy",
                "data.path": str(data),
                "data.instance_prompt": INSTANCE_PROMPT,
                "data.resolution": 64,
                "output": str(scratch / "artifacts" / name),
                "training.steps": 300,
                "training.batch_size": 4,
                "training.checkpoint_every": 0,
                "optimizer.learning_rate": 1e-3,
                "validation.steps": 2,
                "validation.images_per_prompt": 1,
                **extra,
            },
        )
        print(f"training {name} ({method})", flush=True)
        artifacts[name] = train_in_process(config)
    return artifacts


def _check(code: int) -> None:
    if code:
        raise SystemExit(f"a use-case command failed (exit {code})")


def _beside(paths: list[Path], target: Path, gap: int = 8) -> None:
    images = [Image.open(path).convert("RGB") for path in paths]
    sheet = Image.new(
        "RGB", (sum(i.width for i in images) + gap * (len(images) - 1), max(i.height for i in images)), "white"
    )
    x = 0
    for image in images:
        sheet.paste(image, (x, 0))
        x += image.width + gap
    sheet.save(target)


def _augment_sheet(dataset: Path, target: Path) -> None:
    """Per class (row): the real pictures, then synthetic ones."""
    from dreamloom.usecases.jobs import contact_sheet

    rows = []
    for folder in sorted(path for path in dataset.iterdir() if path.is_dir()):
        real = sorted(folder.glob("real_*.png"))[:5]
        synthetic = sorted(folder.glob("synthetic_*.png"))[:7]
        rows += [Image.open(path) for path in [*real, *synthetic]]
    contact_sheet(rows, columns=12).save(target)


if __name__ == "__main__":
    main()
