"""Rendering images in-process from an artifact: to look at results without a server."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.utils import make_image_grid
from PIL import Image

from dreamloom.artifacts import ArtifactManifest, read_manifest
from dreamloom.errors import ArtifactError, DreamloomError
from dreamloom.models.base import BaseModelRef, load_base_model, pipeline_from_components, resolve_base_model


@dataclass(frozen=True)
class GenerationRequest:
    prompts: list[str]
    negative_prompt: str | None = None
    images_per_prompt: int = 1
    steps: int = 25
    guidance: float = 7.5
    seed: int = 0
    width: int | None = None
    height: int | None = None
    control_image: Image.Image | None = None  # ControlNet artifacts: the condition to follow
    control_scale: float = 1.0

    def __post_init__(self):
        if not self.prompts or any(not p.strip() for p in self.prompts):
            raise DreamloomError("give at least one non-empty --prompt")
        if not 1 <= self.steps <= 200:
            raise DreamloomError(f"steps must be between 1 and 200 (got {self.steps})")
        if not 0 <= self.guidance <= 50:
            raise DreamloomError(f"guidance must be between 0 and 50 (got {self.guidance})")
        if not 1 <= self.images_per_prompt <= 64:
            raise DreamloomError(f"images per prompt must be between 1 and 64 (got {self.images_per_prompt})")
        if not 0 <= self.control_scale <= 2:
            raise DreamloomError(f"control scale must be between 0 and 2 (got {self.control_scale})")
        for side in (self.width, self.height):
            if side is not None and (side < 8 or side > 4096 or side % 8):
                raise DreamloomError(f"width and height must be multiples of 8 between 8 and 4096 (got {side})")


def artifact_base(manifest: ArtifactManifest) -> BaseModelRef:
    """The base an artifact was trained on, found again on this machine and checked."""
    recorded = manifest.base_model
    on_this_machine = Path(recorded.location).is_dir()
    spec = recorded.location if on_this_machine else recorded.spec
    current = resolve_base_model(spec, None if on_this_machine else recorded.revision)
    if recorded.revision and current.revision and current.revision != recorded.revision:
        raise ArtifactError(
            f"the artifact was trained on {recorded.spec} revision {recorded.revision}, but that base "
            f"is now revision {current.revision}; use the original base model"
        )
    return current


def load_artifact_pipeline(artifact: Path, strength: float | None = None, device: str | None = None):
    """The base pipeline with the artifact applied (at ``strength``, where the method has one),
    and the artifact's manifest."""
    manifest = read_manifest(artifact)
    method = manifest.method_type
    if strength is not None and strength != 1.0 and not method.has_strength:
        raise DreamloomError(f"a {manifest.method} artifact has no strength to set; leave --scale out")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = load_base_model(artifact_base(manifest), device, dtype)
    if strength is None:
        strength = method.default_strength(manifest.config)
    pipe = method.load_into(pipeline_from_components(model), Path(artifact), manifest.config, strength)
    return pipe, manifest


@torch.no_grad()
def generate(pipe, request: GenerationRequest, default_size: int | None = None) -> list[list[Image.Image]]:
    """Images per prompt; image ``i`` of every prompt uses seed ``request.seed + i``."""
    size = default_size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width, height = request.width or size, request.height or size
    control = _control_arguments(pipe, request, width, height)
    rows = []
    for prompt in request.prompts:
        generators = [torch.Generator("cpu").manual_seed(request.seed + i) for i in range(request.images_per_prompt)]
        rows.append(
            pipe(
                prompt,
                negative_prompt=request.negative_prompt,
                num_images_per_prompt=request.images_per_prompt,
                num_inference_steps=request.steps,
                guidance_scale=request.guidance,
                width=width,
                height=height,
                generator=generators,
                **control,
            ).images
        )
    return rows


def _control_arguments(pipe, request: GenerationRequest, width: int, height: int) -> dict:
    if getattr(pipe, "controlnet", None) is None:
        if request.control_image is not None:
            raise DreamloomError("a control image needs a ControlNet artifact")
        return {}
    if request.control_image is None:
        raise DreamloomError("a ControlNet artifact needs a control image (--control-image FILE)")
    return {
        "image": request.control_image.convert("RGB").resize((width, height)),
        "controlnet_conditioning_scale": request.control_scale,
    }


def save_images(rows: list[list[Image.Image]], request: GenerationRequest, out: Path) -> Path:
    """PNG per image, a grid (one row per prompt) and ``images.json`` with prompt and seed of each."""
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for p, (prompt, images) in enumerate(zip(request.prompts, rows, strict=True)):
        for i, image in enumerate(images):
            name = f"p{p:02d}_s{request.seed + i}.png"
            image.save(out / name)
            index.append({"file": name, "prompt": prompt, "seed": request.seed + i})
    grid = make_image_grid([image for images in rows for image in images], rows=len(rows), cols=len(rows[0]))
    grid.save(out / "grid.png")
    (out / "images.json").write_text(json.dumps(index, indent=1))
    return out / "grid.png"
