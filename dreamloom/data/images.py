"""Opening one user image safely and turning it into 8-bit RGB.

Training data, evaluation references and serving requests all open pictures here, so they accept
the same formats. Refused (``ImageProblem``): files that are not images, formats other than
PNG/JPEG/WebP/BMP/TIFF/GIF, animations and multi-page files, truncated or corrupt files, and
images whose pixel count exceeds the limit (decompression bombs: checked from the header, before
any pixels are decoded).
Converted: EXIF orientation, CMYK, 16-bit and 32-bit grayscale, palettes, alpha (composited on
white, the usual backdrop of product shots), grayscale and bilevel images.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
FORMAT_NAMES = "PNG, JPEG, WebP, BMP, TIFF or GIF"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
# Image files we recognise but cannot decode; named in the error instead of being ignored.
UNSUPPORTED_IMAGE_SUFFIXES = {".heic", ".heif", ".avif", ".jxl"}

ImageFile.LOAD_TRUNCATED_IMAGES = False


def image_files(folder: Path) -> list[Path]:
    """The pictures in ``folder``, sorted; a picture in a format we recognise but do not accept
    is an error naming it, never silently skipped."""
    from dreamloom.errors import DreamloomError

    files = sorted(path for path in Path(folder).iterdir() if path.is_file())
    refused = [path.name for path in files if path.suffix.lower() in UNSUPPORTED_IMAGE_SUFFIXES]
    if refused:
        raise DreamloomError(
            f"{folder}: {', '.join(refused[:5])}{' ...' if len(refused) > 5 else ''} are in formats that are "
            "not supported; convert them to PNG or JPEG"
        )
    return [path for path in files if path.suffix.lower() in IMAGE_SUFFIXES]


class ImageProblem(Exception):
    """Why one file cannot be used, phrased for the person who supplied it."""


def open_rgb(
    source: Path | IO[bytes], max_pixels: int, limit_setting: str | None = "data.max_image_pixels"
) -> Image.Image:
    """Decode ``source`` (a path or an open binary file) fully and return it upright, as 8-bit RGB;
    a refusal for size names ``limit_setting`` as the way to allow more."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=SUPPORTED_FORMATS) as image:
                frames = getattr(image, "n_frames", 1)
                if frames > 1:
                    raise ImageProblem(
                        f"has {frames} frames (an animation or a multi-page file); save the one you want as a PNG"
                    )
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageProblem(
                        f"{width}x{height} is {width * height:,} pixels, over the limit of "
                        f"{max_pixels:,} (a decompression bomb or a needlessly huge file); "
                        f"downscale it{f' or raise {limit_setting}' if limit_setting else ''}"
                    )
                image.load()
                upright = ImageOps.exif_transpose(image)
                return to_rgb(upright)
    except ImageProblem:
        raise
    except UnidentifiedImageError:
        raise ImageProblem(f"not a {FORMAT_NAMES} image (unreadable or another format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageProblem("refused as a decompression bomb; downscale it") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageProblem(f"corrupt or truncated image ({exc})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return _scale_wide_grayscale(image)
    if mode == "F":
        return _scale_float_grayscale(image)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        return _flatten_on_white(image)
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _flatten_on_white(image: Image.Image) -> Image.Image:
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image).convert("RGB")


def _scale_wide_grayscale(image: Image.Image) -> Image.Image:
    pixels = np.asarray(image).astype(np.float64)
    full_scale = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
    return _gray_to_rgb(pixels / full_scale)


def _scale_float_grayscale(image: Image.Image) -> Image.Image:
    pixels = np.asarray(image).astype(np.float64)
    low, high = float(pixels.min()), float(pixels.max())
    return _gray_to_rgb((pixels - low) / (high - low) if high > low else np.zeros_like(pixels))


def _gray_to_rgb(unit: np.ndarray) -> Image.Image:
    eight_bit = np.clip(np.round(unit * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(eight_bit).convert("RGB")
