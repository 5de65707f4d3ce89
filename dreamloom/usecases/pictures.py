"""Reading the pictures people hand to a use case, and turning them into what a request needs:
ControlNet conditions from sketches and references, masks from files or from a region heuristic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dreamloom.data.conditions import EXTRACTED, binary_mask, extract
from dreamloom.data.images import ImageProblem, open_rgb
from dreamloom.errors import DreamloomError

MAX_PIXELS = 40_000_000
REGIONS = ("upper", "lower", "full")
# Garment bands as fractions of the person's height, from the top of their bounding box.
BANDS = {"upper": (0.18, 0.58), "lower": (0.50, 0.98), "full": (0.18, 0.98)}


def picture(path: Path, what: str) -> Image.Image:
    """An image file, or an error that says which one and why."""
    path = Path(path)
    if not path.is_file():
        raise DreamloomError(f"{what} {path} does not exist")
    try:
        return open_rgb(path, MAX_PIXELS)
    except ImageProblem as exc:
        raise DreamloomError(f"{what} {path} cannot be used: {exc}") from None


def condition(image: Image.Image, kind: str, size: tuple[int, int]) -> Image.Image:
    """A ControlNet condition from a sketch or reference picture, at the generation size."""
    if kind not in EXTRACTED:
        raise DreamloomError(f"unknown condition {kind!r}; choose one of {', '.join(EXTRACTED)}")
    return extract(image.resize(size, Image.LANCZOS), kind)


def mask_from_file(path: Path, size: tuple[int, int]) -> Image.Image:
    mask = binary_mask(picture(path, "mask")).convert("L")
    if mask.size != size:
        raise DreamloomError(
            f"mask {path} is {mask.width}x{mask.height} but the picture is {size[0]}x{size[1]}; "
            "give a mask of the picture's size"
        )
    if not np.asarray(mask).any():
        raise DreamloomError(f"mask {path} is empty (no white pixels): nothing would change")
    return mask


def region_mask(person: Image.Image, region: str) -> Image.Image:
    """A garment region from a heuristic: the person is what differs from the photo's border
    colour; the region is a band of their bounding box (upper body, legs, or both)."""
    if region not in REGIONS:
        raise DreamloomError(f"unknown region {region!r}; choose one of {', '.join(REGIONS)} or give --mask")
    pixels = np.asarray(person).astype(int)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(border, axis=0)
    foreground = np.abs(pixels - background).sum(axis=2) > 60
    rows, columns = np.nonzero(foreground)
    if rows.size < 0.01 * foreground.size:
        raise DreamloomError("no person found against the background; give the garment region with --mask")
    top, bottom, left, right = rows.min(), rows.max(), columns.min(), columns.max()
    start, end = BANDS[region]
    band = np.zeros_like(foreground)
    band[int(top + start * (bottom - top)) : int(top + end * (bottom - top)) + 1, left : right + 1] = True
    mask = band & _dilated(foreground, 3)
    return Image.fromarray((mask * 255).astype(np.uint8), "L")


def segmentation_mask(person: Image.Image, model: str, labels: list[str]) -> Image.Image:
    """A garment mask from a segmentation model on the hub (e.g. a human-parsing SegFormer):
    the union of its masks for ``labels``. Needs the model's weights (downloaded or cached)."""
    from transformers import pipeline

    try:
        # safetensors only: a hub model's pickled weights are never loaded
        segmenter = pipeline("image-segmentation", model=model, model_kwargs={"use_safetensors": True})
    except (OSError, ValueError) as exc:  # not found, no weights, or only pickled weights
        reason = str(exc).splitlines()[0]
        raise DreamloomError(
            f"segmentation model {model} cannot be loaded here ({reason}); it needs safetensors weights. "
            "Use --region or --mask instead"
        ) from None
    found = {segment["label"]: segment["mask"] for segment in segmenter(person)}
    missing = [label for label in labels if label not in found]
    if missing:
        raise DreamloomError(f"{model} found no {', '.join(missing)}; it knows: {', '.join(sorted(found))}")
    union = np.zeros((person.height, person.width), bool)
    for label in labels:
        union |= np.asarray(found[label].convert("L")) >= 128
    return Image.fromarray((union * 255).astype(np.uint8), "L")


def _dilated(mask: np.ndarray, radius: int) -> np.ndarray:
    import cv2

    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
