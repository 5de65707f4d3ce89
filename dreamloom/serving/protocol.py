"""What a generation request to the serving endpoint is: its fields, their limits, the Triton
tensor names, and the checks that turn bad input into an error naming the problem.

One request is one prompt and one image. The server and the client both use this module, so the
names and limits cannot drift apart.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields

import numpy as np
from PIL import Image

from dreamloom.errors import DreamloomError
from dreamloom.samplers import sampler_name

MODES = ("txt2img", "img2img", "inpaint", "controlnet")
IMAGE_INPUTS = {"img2img": ("init_image",), "inpaint": ("init_image", "mask"), "controlnet": ("control_image",)}
MAX_PROMPT_CHARS = 2000
MAX_STEPS = 150
MAX_SIDE = 2048
MAX_IMAGE_BYTES = 16 * 2**20
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_ADAPTERS = 4
OUTPUT = "IMAGE"


class RequestError(DreamloomError):
    """A request the server refuses (the caller's to fix): INVALID_ARGUMENT, HTTP 400, with the
    message; counted by ``reason`` in dreamloom_requests_refused_total."""

    reason = "invalid_argument"


class OverBudget(RequestError):
    """A request that would cost more than the deployment allows one request."""

    reason = "over_budget"


class ModelFault(DreamloomError):
    """The server cannot answer a valid request (broken weights, an adapter that will not load): a
    server fault, HTTP 500, counted by Triton as a failure; the caller gets an error id, the log
    the cause."""


@dataclass(frozen=True)
class AdapterUse:
    reference: str  # NAME@ALIAS, NAME/VERSION or NAME
    scale: float | None  # None: the request's adapter_scale


def parse_adapters(text: str) -> list[AdapterUse]:
    """``"shoe@champion, brand-style@champion*0.6, layout@champion"``: adapters acting together,
    each with an optional weight after ``*`` (concept and style LoRAs mix by weight; at most one
    hypernetwork and one ControlNet)."""
    uses = []
    for part in (piece.strip() for piece in text.split(",")):
        if not part:
            continue
        reference, _, weight = part.partition("*")
        scale = None
        if weight:
            try:
                scale = float(weight)
            except ValueError:
                message = f"adapter weight {weight!r} in {part!r} is not a number; write NAME@ALIAS*0.8"
                raise RequestError(message) from None
            _within(f"weight of {reference.strip()}", scale, 0.0, 2.0)
        uses.append(AdapterUse(reference.strip(), scale))
    references = [use.reference for use in uses]
    if len(set(references)) != len(references):
        raise RequestError(f"an adapter is named twice in {text!r}; name each once")
    if len(uses) > MAX_ADAPTERS:
        raise RequestError(f"{len(uses)} adapters in one request; at most {MAX_ADAPTERS}")
    return uses


@dataclass(frozen=True)
class ImageRequest:
    prompt: str
    negative_prompt: str = ""
    mode: str = "txt2img"
    adapter: str = ""  # "name@alias", "name/version", several joined by commas (parse_adapters), "": the base
    adapter_scale: float = 1.0
    sampler: str = ""  # an A1111 or diffusers name (models.samplers.SAMPLERS); "": the default, DPM++ 2M
    steps: int = 25
    guidance: float = 7.5
    width: int = 0  # 0: the base model's native size
    height: int = 0
    seed: int = 0
    strength: float = 0.75  # img2img and inpaint: how far from the init image
    control_scale: float = 1.0
    init_image: bytes = b""  # encoded PNG/JPEG/WebP
    mask: bytes = b""  # white = repaint
    control_image: bytes = b""
    dry_run: bool = False  # check everything, load the adapters, generate nothing (a blank 8x8 image)
    # Never batched with other requests: batching changes floating-point order, so only a request
    # that runs alone gives exactly the same pixels every time (recipes ask for this).
    solo: bool = False

    def check(self) -> None:
        """Refuse out-of-range values; image contents are checked when decoded."""
        if not self.prompt.strip():
            raise RequestError("prompt is empty; send the text to draw")
        if len(self.prompt) > MAX_PROMPT_CHARS or len(self.negative_prompt) > MAX_PROMPT_CHARS:
            raise RequestError(f"prompt is longer than {MAX_PROMPT_CHARS} characters; shorten it")
        if self.mode not in MODES:
            raise RequestError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        _within("steps", self.steps, 1, MAX_STEPS)
        _within("guidance", self.guidance, 0.0, 30.0)
        _within("adapter_scale", self.adapter_scale, 0.0, 2.0)
        _within("strength", self.strength, 0.01, 1.0)
        _within("control_scale", self.control_scale, 0.0, 2.0)
        self.adapters()
        self.sampler_name()
        _within("seed", self.seed, 0, 2**63 - 1)
        for side, value in (("width", self.width), ("height", self.height)):
            if value and (value < 64 or value > MAX_SIDE or value % 8):
                raise RequestError(f"{side} {value} is out of range: use a multiple of 8 from 64 to {MAX_SIDE}")
        for name in IMAGE_INPUTS.get(self.mode, ()):
            if not getattr(self, name):
                raise RequestError(f"mode {self.mode} needs {name.upper()} (an encoded PNG or JPEG)")
        for name in ("init_image", "mask", "control_image"):
            if len(getattr(self, name)) > MAX_IMAGE_BYTES:
                raise RequestError(f"{name.upper()} is larger than {MAX_IMAGE_BYTES // 2**20} MiB")

    def adapters(self) -> list[AdapterUse]:
        return parse_adapters(self.adapter)

    def sampler_name(self) -> str:
        try:
            return sampler_name(self.sampler)
        except DreamloomError as exc:
            raise RequestError(str(exc)) from None

    def batch_key(self) -> tuple:
        """What requests must share to run as one batch through the pipeline, besides the adapters
        that act on a whole batch (the engine adds those; per-sample adapters need not match)."""
        return (
            self.mode,
            self.sampler_name(),
            self.steps,
            self.guidance,
            self.width,
            self.height,
            self.strength,
            self.control_scale,
            self.dry_run,
        )


def _within(name: str, value, low, high) -> None:
    if not low <= value <= high:
        raise RequestError(f"{name} {value} is out of range [{low}, {high}]")


def decode_image(name: str, data: bytes, mode: str = "RGB") -> Image.Image:
    """An uploaded picture, opened as training opens its images (``data.images``: the same formats,
    upright, alpha on white, 16-bit scaled), in ``mode``; refused when it cannot be decoded, is
    animated or is a decompression bomb."""
    from dreamloom.data.images import ImageProblem, open_rgb

    try:
        image = open_rgb(io.BytesIO(data), MAX_IMAGE_PIXELS, limit_setting=None)
    except ImageProblem as problem:
        raise RequestError(f"{name.upper()} cannot be decoded: {problem}") from None
    return image if mode == "RGB" else image.convert(mode)


def probe_request(mode: str = "txt2img", adapter: str = "") -> ImageRequest:
    """A small, quick request that proves a model version answers in ``mode`` (a mode with image
    inputs gets blank ones: a ControlNet needs something to follow)."""
    blank = encode_image(Image.new("RGB", (64, 64), "black"))
    images = {name: blank for name in IMAGE_INPUTS.get(mode, ())}
    return ImageRequest("a photo", adapter=adapter, steps=2, width=64, height=64, seed=0, mode=mode, **images)


def check_picture(image: np.ndarray, what: str) -> None:
    """Refuse an image that is one flat colour: what NaN weights render once converted to pixels."""
    if image.size == 0 or int(image.max()) == int(image.min()):
        value = int(image.flat[0]) if image.size else None
        raise DreamloomError(f"{what} rendered a blank image (every pixel {value}): its weights are broken")


def encode_image(image: Image.Image | np.ndarray) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ----- Triton tensors -----

# field -> (Triton input name, datatype, numpy dtype); every input is optional except PROMPT
TENSORS = {
    "prompt": ("PROMPT", "BYTES", np.object_),
    "negative_prompt": ("NEGATIVE_PROMPT", "BYTES", np.object_),
    "mode": ("MODE", "BYTES", np.object_),
    "adapter": ("ADAPTER", "BYTES", np.object_),
    "adapter_scale": ("ADAPTER_SCALE", "FP32", np.float32),
    "sampler": ("SAMPLER", "BYTES", np.object_),
    "steps": ("STEPS", "INT32", np.int32),
    "guidance": ("GUIDANCE", "FP32", np.float32),
    "width": ("WIDTH", "INT32", np.int32),
    "height": ("HEIGHT", "INT32", np.int32),
    "seed": ("SEED", "INT64", np.int64),
    "strength": ("STRENGTH", "FP32", np.float32),
    "control_scale": ("CONTROL_SCALE", "FP32", np.float32),
    "init_image": ("INIT_IMAGE", "BYTES", np.object_),
    "mask": ("MASK", "BYTES", np.object_),
    "control_image": ("CONTROL_IMAGE", "BYTES", np.object_),
    "dry_run": ("DRY_RUN", "BOOL", np.bool_),
    "solo": ("SOLO", "BOOL", np.bool_),
}
_TEXT_FIELDS = {"prompt", "negative_prompt", "mode", "adapter", "sampler"}


def to_arrays(request: ImageRequest) -> dict[str, np.ndarray]:
    """The request as Triton input arrays (batch of one); defaults are left out."""
    defaults = ImageRequest(prompt="")
    arrays = {}
    for item in fields(ImageRequest):
        value = getattr(request, item.name)
        if item.name != "prompt" and value == getattr(defaults, item.name):
            continue
        name, _, dtype = TENSORS[item.name]
        if item.name in _TEXT_FIELDS:
            value = value.encode("utf-8")
        elif np.issubdtype(dtype, np.integer) and not np.iinfo(dtype).min <= value <= np.iinfo(dtype).max:
            # numpy would wrap it (steps 2**40 -> 0): refuse the value the caller wrote
            raise RequestError(f"{item.name} {value} is out of range for {TENSORS[item.name][1]}")
        arrays[name] = np.array([[value]], dtype=dtype)
    return arrays


def from_arrays(get) -> ImageRequest:
    """The request from Triton inputs; ``get(name)`` returns the array or None when not sent."""
    values = {}
    for field_name, (name, _, _) in TENSORS.items():
        array = get(name)
        if array is None:
            continue
        value = array.reshape(-1)[0]
        if field_name in _TEXT_FIELDS:
            try:
                value = value.decode("utf-8") if isinstance(value, bytes) else str(value)
            except UnicodeDecodeError:
                raise RequestError(f"{name} is not UTF-8 text") from None
        elif isinstance(value, np.generic):
            value = value.item()
        values[field_name] = value
    if "prompt" not in values:
        raise RequestError("PROMPT is missing")
    request = ImageRequest(**values)
    request.check()
    return request
