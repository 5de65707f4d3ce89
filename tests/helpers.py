"""Small builders for test inputs (image folders, run configs, serving requests) and comparisons."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dreamloom.config import RunConfig, load_run_config


def draw_images(
    folder: Path, count: int = 4, size: tuple[int, int] = (96, 80), seed: int = 0, captions: bool = False
) -> Path:
    """Distinct, deterministic pictures: a coloured ellipse on a coloured backdrop."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        backdrop = tuple(rng.randint(120, 255) for _ in range(3))
        image = Image.new("RGB", size, backdrop)
        draw = ImageDraw.Draw(image)
        x, y = rng.randint(0, size[0] // 3), rng.randint(0, size[1] // 3)
        draw.ellipse((x, y, x + size[0] // 2, y + size[1] // 2), fill=(rng.randint(0, 255), 40, 40))
        image.save(folder / f"image_{index}.png")
        if captions:
            (folder / f"image_{index}.txt").write_text(f"a photo of sks ball, view {index}")
    return folder


def run_config(data: Path, output: Path, **overrides) -> RunConfig:
    """A small, fast run on the tiny base; ``overrides`` use dotted keys with __ for dots."""
    document = {
        "method": "lora",
        "base_model": "tiny",
        "data.path": str(data),
        "data.instance_prompt": "a photo of sks ball",
        "data.resolution": 64,
        "output": str(output),
        "training.steps": 4,
        "training.batch_size": 2,
        "training.checkpoint_every": 0,
        "validation.steps": 2,
        "validation.images_per_prompt": 1,
        "scaling.cpus_per_worker": 1,  # pytest-xdist runs two trainings at once on CI's two cores
    }
    document.update({key.replace("__", "."): value for key, value in overrides.items()})
    return load_run_config(None, document)


# Per-method settings that make a small run of each method valid.
METHOD_OPTIONS = {
    "lora": {},
    "dreambooth": {
        "prior__class_prompt": "a photo of a ball",
        "prior__num_class_images": 2,
        "prior__generation_steps": 2,
    },
    "dreambooth-lora": {
        "prior__class_prompt": "a photo of a ball",
        "prior__num_class_images": 2,
        "prior__generation_steps": 2,
    },
    "textual-inversion": {
        "data__instance_prompt": "a photo of <sks-ball>",
        "textual_inversion__placeholder_token": "<sks-ball>",
        "textual_inversion__initializer_token": "ball",
        "textual_inversion__num_vectors": 2,
    },
    "pivotal": {
        "data__instance_prompt": "a photo of <sks-ball>",
        "textual_inversion__placeholder_token": "<sks-ball>",
        "textual_inversion__initializer_token": "ball",
        "textual_inversion__train_fraction": 0.5,
    },
    "hypernetwork": {},
    "controlnet": {"controlnet__condition": "canny"},
    "loha": {},
    "lokr": {},
}


def method_config(method: str, data: Path, output: Path, **overrides) -> RunConfig:
    return run_config(data, output, method=method, **{**METHOD_OPTIONS[method], **overrides})


def train_toy(method: str, data: Path, output: Path, **overrides) -> Path:
    """A method trained in process (no Ray, no MLflow run) on the toy base; ``overrides`` use dotted keys."""
    from dreamloom.toy.concepts import INSTANCE_PROMPT
    from dreamloom.training.local import train_in_process

    document = {
        "method": method,
        "base_model": "toy",
        "data.path": str(data),
        "data.instance_prompt": INSTANCE_PROMPT,
        "data.resolution": 64,
        "output": str(output),
        "training.steps": 3,
        "training.batch_size": 2,
        "training.checkpoint_every": 0,
        "validation.steps": 2,
        "validation.images_per_prompt": 1,
        "optimizer.learning_rate": 1e-2,
        **overrides,
    }
    return train_in_process(load_run_config(None, document))


def register_champion(artifact: Path, name: str) -> str:
    """Register the artifact as a new version of ``name`` and make it the champion."""
    from dreamloom.registry import promote, register

    version = register(artifact, name)
    promote(name, str(version.version), force=True, reason="test")
    return str(version.version)


def square_mask_png(size: tuple[int, int] = (64, 64)) -> bytes:
    """An encoded inpainting mask: white (repaint) in the middle half of a 64 px image."""
    from dreamloom.serving.protocol import encode_image

    mask = Image.new("L", size, 0)
    mask.paste(255, (16, 16, 48, 48))
    return encode_image(mask)


def pixel_difference(first: np.ndarray, second: np.ndarray) -> float:
    """Mean absolute difference of two uint8 images, in pixel levels (0-255)."""
    return float(np.abs(first.astype(int) - second.astype(int)).mean())


def mode_cases(scene_png: bytes) -> list[tuple[str, tuple[int, int], dict]]:
    """(mode, size, images) for one request per serving mode, txt2img at two sizes."""
    return [
        ("txt2img", (64, 64), {}),
        ("txt2img", (96, 64), {}),
        ("img2img", (64, 64), {"init_image": scene_png}),
        ("inpaint", (64, 64), {"init_image": scene_png, "mask": square_mask_png()}),
        ("controlnet", (64, 64), {"control_image": scene_png}),
    ]
