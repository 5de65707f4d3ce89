"""What every use case has in common: a job (the recipe) of images to render through the serving
endpoint, checked by the server before anything is generated, and the folder it produces.

A recipe records everything that decides the pixels: the model, adapters and weights, the
generation settings, each image's prompt and seed, and every input picture (copied beside the
recipe, with its sha256). Rendering the same recipe against the same deployed versions gives the
same images; ``dreamloom ad --recipe FILE`` (and the other commands) do exactly that.

Output folder (written to a staging folder and renamed: complete or absent):
  images/NNN.png, contact-sheet.png, index.html, recipe.yaml, inputs/*.png
"""

from __future__ import annotations

import hashlib
import html
import io
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dreamloom import __version__
from dreamloom.errors import DreamloomError
from dreamloom.files import staged_folder
from dreamloom.samplers import DEFAULT_SAMPLER, sampler_name
from dreamloom.serving.protocol import ImageRequest, RequestError

RECIPE_FILE = "recipe.yaml"
INPUTS = "inputs"


class Render(BaseModel):
    """One image: its prompt, seed and (for per-image inputs such as video frames) its pictures."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    negative_prompt: str = ""
    seed: int = Field(ge=0)
    inputs: dict[str, str] = {}  # request field (init_image, mask, control_image) -> file under inputs/
    label: str = ""  # what the image is, for the contact sheet (a scene, a frame's name)


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["ad", "design", "edit", "tryon", "augment"]
    model: str = "dreamloom"
    mode: Literal["txt2img", "img2img", "inpaint", "controlnet"] = "txt2img"
    adapter: str = ""  # NAME@ALIAS[*weight], comma-separated
    adapter_scale: float = 1.0
    sampler: str = DEFAULT_SAMPLER  # recorded by its canonical name (recipes before it was recorded used this one)
    steps: int = 25
    guidance: float = 7.5
    width: int = 0
    height: int = 0
    strength: float = 0.75
    control_scale: float = 1.0
    inputs: dict[str, str] = {}  # shared pictures: request field -> file under inputs/
    digests: dict[str, str] = {}  # file under inputs/ -> sha256
    keep_outside_mask: bool = False  # inpainting: paste the result into the original inside the mask only
    exact: bool = True  # each image generated alone (no batching): a re-render gives identical pixels
    renders: list[Render] = Field(min_length=1)
    notes: dict[str, str] = {}  # what the command was asked (brief, condition, region), for people
    dreamloom_version: str = __version__

    @field_validator("sampler")
    @classmethod
    def _canonical_sampler(cls, value: str) -> str:
        return sampler_name(value)  # "DPM++ 2M Karras" -> dpmpp_2m_karras; unknown names refused

    def requests(self, folder: Path) -> list[ImageRequest]:
        pictures = {name: read_input(folder, name, self.digests) for name in self._input_files()}
        requests = []
        for render in self.renders:
            images = {field: pictures[name] for field, name in {**self.inputs, **render.inputs}.items()}
            requests.append(
                ImageRequest(
                    prompt=render.prompt,
                    negative_prompt=render.negative_prompt,
                    mode=self.mode,
                    adapter=self.adapter,
                    adapter_scale=self.adapter_scale,
                    sampler=self.sampler,
                    steps=self.steps,
                    guidance=self.guidance,
                    width=self.width,
                    height=self.height,
                    seed=render.seed,
                    strength=self.strength,
                    control_scale=self.control_scale,
                    solo=self.exact,
                    **images,
                )
            )
        return requests

    def _input_files(self) -> set[str]:
        return set(self.inputs.values()) | {name for render in self.renders for name in render.inputs.values()}


def load_recipe(path: Path) -> tuple[Recipe, Path]:
    """A recipe and the folder its inputs live in."""
    path = Path(path)
    if path.is_dir():
        path = path / RECIPE_FILE
    if not path.is_file():
        raise DreamloomError(f"recipe {path} does not exist")
    try:
        return Recipe.model_validate(yaml.safe_load(path.read_text()) or {}), path.parent
    except (yaml.YAMLError, ValidationError) as exc:
        raise DreamloomError(f"{path} is not a dreamloom recipe: {exc}") from None


def read_input(folder: Path, name: str, digests: dict[str, str]) -> bytes:
    path = folder / INPUTS / name
    if not path.is_file():
        raise DreamloomError(f"the recipe's input {path} is missing")
    data = path.read_bytes()
    if digests.get(name) != hashlib.sha256(data).hexdigest():
        raise DreamloomError(f"the recipe's input {path} was changed since the recipe was written")
    return data


class Staged:
    """Input pictures collected while a job is being planned, written beside its recipe."""

    def __init__(self):
        self.files: dict[str, bytes] = {}

    def add(self, name: str, image: Image.Image) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        self.files[f"{name}.png"] = buffer.getvalue()
        return f"{name}.png"

    def digests(self) -> dict[str, str]:
        return {name: hashlib.sha256(data).hexdigest() for name, data in self.files.items()}

    def write(self, folder: Path) -> None:
        (folder / INPUTS).mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (folder / INPUTS / name).write_bytes(data)


def render(recipe: Recipe, client, out: Path, staged: Staged | None = None, source: Path | None = None) -> Path:
    """Check the job with the server (nothing is generated if anything is wrong), render every
    image, and write the output folder. Inputs come from ``staged`` (a new job) or ``source``
    (the folder of a recipe being re-rendered)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DreamloomError(f"output folder {out} is not empty; choose another --out")
    with tempfile.TemporaryDirectory(prefix="dreamloom-job-") as scratch:
        inputs = Path(scratch)
        if staged is not None:
            staged.write(inputs)
        else:
            shutil.copytree(Path(source) / INPUTS, inputs / INPUTS, dirs_exist_ok=True)
        requests = recipe.requests(inputs)
        _check_with_server(requests, client, recipe.model)
        print(f"[dreamloom] {recipe.kind}: rendering {len(recipe.renders)} images through {client.url}", flush=True)
        images = client.generate_many(requests, progress=True, model=recipe.model)
        if recipe.keep_outside_mask:
            images = [_inside_mask_only(image, request) for image, request in zip(images, requests, strict=True)]
        return _write_folder(recipe, images, inputs, out)


def _check_with_server(requests: list[ImageRequest], client, model: str) -> None:
    """One dry run per distinct setting: unknown adapters, wrong kinds and bad pictures are named
    before any image is generated."""
    from dreamloom.serving.client import ServingError

    distinct = {(r.batch_key(), r.adapter, r.adapter_scale, r.init_image, r.mask, r.control_image): r for r in requests}
    print(f"[dreamloom] checking {len(distinct)} distinct requests with {client.url}", flush=True)
    for request in distinct.values():
        try:
            client.generate(replace(request, dry_run=True), model=model)
        except (ServingError, RequestError) as exc:
            raise DreamloomError(f"the endpoint refused the job before generating anything: {exc}") from None


def _inside_mask_only(generated: np.ndarray, request: ImageRequest) -> np.ndarray:
    """The original picture with the generated pixels pasted inside the mask: every pixel outside
    it is the original's, exactly."""
    original = np.asarray(Image.open(io.BytesIO(request.init_image)).convert("RGB"))
    mask = np.asarray(Image.open(io.BytesIO(request.mask)).convert("L")) >= 128
    if generated.shape != original.shape:
        height, width = original.shape[:2]
        generated = np.asarray(Image.fromarray(generated).resize((width, height), Image.LANCZOS))
    return np.where(mask[..., None], generated, original).astype(np.uint8)


def _write_folder(recipe: Recipe, images: list[np.ndarray], inputs: Path, out: Path) -> Path:
    with staged_folder(out) as staging:
        (staging / "images").mkdir()
        names = []
        for index, image in enumerate(images):
            names.append(f"images/{index:03d}.png")
            Image.fromarray(image).save(staging / names[-1])
        shutil.copytree(inputs / INPUTS, staging / INPUTS, dirs_exist_ok=True)
        contact_sheet([Image.fromarray(image) for image in images]).save(staging / "contact-sheet.png")
        (staging / "index.html").write_text(index_html(recipe, names))
        (staging / RECIPE_FILE).write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    print(f"[dreamloom] wrote {len(images)} images, contact-sheet.png, index.html and {RECIPE_FILE} to {out}")
    return out


def inline_html(out: Path) -> str:
    """The folder's index.html with its images embedded (the KFP UI shows one file, not a folder)."""
    import base64
    import re

    def embed(match: re.Match) -> str:
        data = base64.b64encode((out / match[1]).read_bytes()).decode()
        return f"src='data:image/png;base64,{data}'"

    return re.sub(r"src='(images/\d+\.png)'", embed, (out / "index.html").read_text())


def contact_sheet(images: list[Image.Image], columns: int = 4, gap: int = 4) -> Image.Image:
    """The images in a grid, left to right, top to bottom, on white."""
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    width = max(image.width for image in images)
    height = max(image.height for image in images)
    sheet = Image.new("RGB", (columns * (width + gap) + gap, rows * (height + gap) + gap), "white")
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        sheet.paste(image, (gap + column * (width + gap), gap + row * (height + gap)))
    return sheet


def index_html(recipe: Recipe, names: list[str]) -> str:
    settings = {key: value for key, value in recipe.model_dump().items() if key not in ("renders", "digests", "notes")}
    rows = "\n".join(
        f"<tr><td><img src='{name}' width='160'></td><td>{html.escape(render.label)}</td>"
        f"<td>{html.escape(render.prompt)}</td><td>{html.escape(render.negative_prompt)}</td><td>{render.seed}</td></tr>"
        for name, render in zip(names, recipe.renders, strict=True)
    )
    facts = "".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in {**settings, **recipe.notes}.items()
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>dreamloom {recipe.kind}</title></head><body>"
        f"<h1>dreamloom {recipe.kind}</h1><ul>{facts}</ul>"
        "<table border='1' cellpadding='4'><tr><th>image</th><th>what</th><th>prompt</th><th>negative</th>"
        f"<th>seed</th></tr>{rows}</table><p>Re-render: <code>dreamloom {recipe.kind} --recipe {RECIPE_FILE}"
        " --url URL --out NEW_FOLDER</code></p></body></html>"
    )


def parse_size(text: str | None) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` as (width, height); empty means (0, 0): the model's or the picture's size."""
    if not text:
        return 0, 0
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise DreamloomError(f"--size expects WIDTHxHEIGHT such as 512x512, got {text!r}") from None
    return width, height


def seeds(first: int, count: int) -> list[int]:
    return [first + index for index in range(count)]


def multiple_of_eight(width: int, height: int, longest: int = 1024) -> tuple[int, int]:
    """A generation size near (width, height): multiples of 8, the longer side at most ``longest``."""
    scale = min(1.0, longest / max(width, height))
    return max(64, round(width * scale / 8) * 8), max(64, round(height * scale / 8) * 8)
