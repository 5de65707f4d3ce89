"""Condition images for ControlNet: edges (canny), strokes (scribble) and masks.

Canny and scribble are computed from each prepared image; masks and user conditions come from
companion files beside the images (``name.mask.png``, ``name.cond.png``) and are cropped exactly
like their image. Conditions are white-on-black RGB images, as ControlNet expects.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

EXTRACTED = ("canny", "scribble")
COMPANION_SUFFIX = {"mask": ".mask", "user": ".cond"}


def extract(image: Image.Image, kind: str, low: int = 100, high: int = 200) -> Image.Image:
    """Canny edges, or scribble-like strokes (edges of a blurred image, thickened)."""
    gray = np.asarray(image.convert("L"))
    if kind == "canny":
        lines = cv2.Canny(gray, low, high)
    elif kind == "scribble":
        lines = cv2.Canny(cv2.GaussianBlur(gray, (5, 5), 0), low // 2, high // 2)
        lines = cv2.dilate(lines, np.ones((3, 3), np.uint8), iterations=1)
    else:
        raise ValueError(f"no built-in extractor for condition {kind!r}; choose one of {', '.join(EXTRACTED)}")
    return Image.fromarray(lines).convert("RGB")


def binary_mask(image: Image.Image) -> Image.Image:
    """A mask as white (inside) on black (outside), whatever shades or channels it came in."""
    gray = np.asarray(image.convert("L"))
    return Image.fromarray(np.where(gray >= 128, 255, 0).astype(np.uint8)).convert("RGB")
