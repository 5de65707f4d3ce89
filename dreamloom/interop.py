"""Artifacts to and from the files other tools read: kohya/A1111/ComfyUI adapter files (LoRA,
DoRA, LoHa, LoKr), A1111 hypernetworks and A1111 embeddings.

The method says how its tensors map to the other tool's keys (``export_kohya``, ``import_kohya``);
this module reads and writes the files, finds the method a file belongs to, and publishes an
imported artifact with a manifest that records where it came from. Nothing is ever unpickled: kohya
files are safetensors, and A1111's ``.pt`` hypernetworks are read with ``weights_only``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dreamloom.artifacts import ArtifactManifest, ImportRecord, publish, read_manifest
from dreamloom.errors import DreamloomError
from dreamloom.files import sha256_file
from dreamloom.methods import get_method, kohya_reader


def export_kohya(artifact: Path, target: Path) -> Path:
    """Write the adapter of ``artifact`` as one kohya-format safetensors file."""
    manifest = read_manifest(artifact)
    tensors, metadata = manifest.method_type.export_kohya(
        Path(artifact), manifest.config, manifest.base_model.family == "sdxl"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target), metadata=metadata)
    return target


def export_a1111_embedding(artifact: Path, target_folder: Path) -> Path:
    """The embedding of a textual-inversion or pivotal artifact as A1111 reads it (``NAME.safetensors``)."""
    from dreamloom.methods.textual_inversion import EMBEDDING_FILE, export_a1111

    manifest = read_manifest(artifact)
    if not (Path(artifact) / EMBEDDING_FILE).is_file():
        raise DreamloomError(f"{artifact} is a {manifest.method} artifact; it holds no textual-inversion embedding")
    return export_a1111(Path(artifact), target_folder)


def import_kohya(source: Path, base_model: str, output: Path, trigger_token: str | None = None) -> ArtifactManifest:
    """Turn a kohya-format adapter file for ``base_model`` into a dreamloom artifact of its method."""
    from dreamloom.models.base import load_base_model, resolve_base_model

    source = Path(source)
    if source.suffix != ".safetensors" or not source.is_file():
        raise DreamloomError(f"{source} is not a .safetensors file; dreamloom never loads pickled (.pt/.ckpt) weights")
    try:
        tensors = load_file(str(source))
        with safe_open(str(source), "pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:  # safetensors raises several types for damaged files
        raise DreamloomError(f"{source} is not a readable safetensors file: {exc}") from None
    method = kohya_reader(set(tensors))
    ref = resolve_base_model(base_model)
    model = load_base_model(ref)
    with tempfile.TemporaryDirectory() as staging:
        try:
            method.import_kohya(tensors, metadata, model, Path(staging))
        except DreamloomError as exc:
            raise DreamloomError(f"{source}: {exc}") from None
        return publish(Path(staging), output, _imported(method.name, ref, model, source, "kohya", trigger_token))


def import_a1111_hypernetwork(source: Path, base_model: str, output: Path) -> ArtifactManifest:
    """An A1111 ``.pt`` hypernetwork as a dreamloom hypernetwork artifact in safetensors."""
    from dreamloom.methods.hypernetwork import read_a1111, save_hypernetwork
    from dreamloom.models.base import resolve_base_model

    hypernetwork, steps = read_a1111(Path(source))
    ref = resolve_base_model(base_model)
    manifest = _imported("hypernetwork", ref, None, Path(source), "a1111").model_copy(update={"steps": steps})
    with tempfile.TemporaryDirectory() as staging:
        save_hypernetwork(hypernetwork, Path(staging))
        return publish(Path(staging), output, manifest)


def _imported(method: str, ref, model, source: Path, file_format: str, trigger: str | None = None):
    resolution = model.unet.config.sample_size * model.vae_scale_factor if model is not None else 0
    return ArtifactManifest(
        method=method,
        artifact_kind=get_method(method).artifact_kind,
        base_model=ref,
        trigger_token=trigger,
        instance_prompt=trigger or "",
        resolution=resolution,
        dataset_hash=f"unknown (imported from {file_format} format)",
        imported_from=ImportRecord(source=str(source.absolute()), format=file_format, sha256=_sha256(source)),
        steps=0,
    )


def _sha256(path: Path) -> str:
    return "sha256:" + sha256_file(path)
