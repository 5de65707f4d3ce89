"""Rendering images in-process from an artifact: to look at results without a server (the
rendering itself is ``dreamloom.generation``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers.utils import make_image_grid
from PIL import Image

from dreamloom.artifacts import ArtifactManifest, read_manifest
from dreamloom.errors import ArtifactError, DreamloomError
from dreamloom.generation import GenerationRequest
from dreamloom.models.base import BaseModelRef, load_base_model, pipeline_from_components, resolve_base_model
from dreamloom.models.precision import inference_dtype


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
    dtype = inference_dtype(device)
    model = load_base_model(artifact_base(manifest), device, dtype)
    if strength is None:
        strength = method.default_strength(manifest.config)
    pipe = method.load_into(pipeline_from_components(model), Path(artifact), manifest.config, strength)
    return pipe, manifest


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
