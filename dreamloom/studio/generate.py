"""The Generate tab: requests built from the form (a painted mask, a sketch or an uploaded
picture turned into a ControlNet condition), sent to the serving endpoint, and each image kept
with its recipe, the request that made it, so that it re-renders identically."""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass, replace

import numpy as np
from PIL import Image

from dreamloom.data.conditions import binary_mask, extract
from dreamloom.errors import DreamloomError
from dreamloom.serving.client import ServingClient
from dreamloom.serving.protocol import ImageRequest, RequestError

PICTURE_FIELDS = ("init_image", "mask", "control_image")
CONDITIONS = ("canny", "scribble", "as drawn")  # how an upload or a sketch becomes the ControlNet condition


@dataclass(frozen=True)
class Rendered:
    image: Image.Image
    request: ImageRequest  # sent solo: the same request gives the same pixels

    @property
    def recipe(self) -> dict:
        """The request as people read it: every setting, and each input picture by its sha256."""
        recipe = {key: value for key, value in asdict(self.request).items() if key not in PICTURE_FIELDS}
        for field in PICTURE_FIELDS:
            if data := getattr(self.request, field):
                recipe[f"{field}_sha256"] = hashlib.sha256(data).hexdigest()
        return recipe


def png_bytes(image: Image.Image | np.ndarray | None) -> bytes:
    if image is None:
        return b""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def painted_mask(editor: dict | None) -> tuple[Image.Image, Image.Image]:
    """An image editor's value as (picture, mask): the background is the picture, and whatever was
    painted on its layers becomes white (repaint) on black."""
    if not editor or editor.get("background") is None:
        raise DreamloomError("inpainting needs a picture: upload one, then paint the area to repaint")
    background = _pil(editor["background"])
    painted = np.zeros((background.height, background.width), dtype=bool)
    for layer in editor.get("layers") or []:
        alpha = np.asarray(_pil(layer, mode="RGBA").resize(background.size))[..., 3]
        painted |= alpha > 0
    if not painted.any():
        raise DreamloomError("no area painted: paint over what should change")
    mask = Image.fromarray(np.where(painted, 255, 0).astype(np.uint8)).convert("RGB")
    return background.convert("RGB"), mask


def condition(picture, kind: str) -> Image.Image:
    """What a ControlNet follows: edges or strokes extracted from a photo, or a sketch as drawn
    (dark strokes on white become white on black, the convention ControlNets train on)."""
    if isinstance(picture, dict):  # a sketchpad's value
        picture = picture.get("composite")
    if picture is None:
        raise DreamloomError("ControlNet needs a condition: upload a picture or sketch one")
    image = _pil(picture).convert("RGB")
    if kind == "as drawn":
        gray = np.asarray(image.convert("L"))
        return binary_mask(Image.fromarray(255 - gray)) if gray.mean() > 127 else binary_mask(image)
    return extract(image, kind)


def render(url: str, request: ImageRequest, model: str | None = None) -> Rendered:
    request = replace(request, solo=True)
    try:
        request.check()
    except RequestError as exc:
        raise DreamloomError(str(exc)) from None
    with ServingClient(url) as client:
        return Rendered(Image.fromarray(client.generate(request, model)), request)


def rerender(url: str, rendered: Rendered, model: str | None = None) -> tuple[Rendered, bool]:
    """The same recipe again, and whether every pixel came out the same."""
    again = render(url, rendered.request, model)
    return again, np.array_equal(np.asarray(again.image), np.asarray(rendered.image))


def _pil(value, mode: str | None = None) -> Image.Image:
    image = Image.fromarray(value) if isinstance(value, np.ndarray) else value
    if isinstance(image, str):
        image = Image.open(image)
    return image.convert(mode) if mode else image
