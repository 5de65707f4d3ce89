"""Artifact folders: a method's weights plus the manifest ``dreamloom.json`` that describes them.

The manifest says what the weights are (method, base model and revision, trigger token,
resolution), where they came from (dataset hash and the run config of the training run, or the
file an imported artifact was converted from; the MLflow run) and which files belong to the
artifact (with their sha256), so that anything loading an artifact can check it first.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from dreamloom import __version__
from dreamloom.config import RunConfig
from dreamloom.errors import ArtifactError
from dreamloom.files import sha256_file, staged_folder
from dreamloom.methods import METHODS, TrainingMethod, get_method
from dreamloom.models.base import BaseModelRef
from dreamloom.tracking import Lineage

MANIFEST_FILE = "dreamloom.json"
FORMAT_VERSION = 2


class ImportRecord(BaseModel):
    """Where an imported artifact came from (it has no training run)."""

    model_config = ConfigDict(extra="forbid")

    source: str  # the file's path when it was imported
    format: str  # "kohya", "a1111", ...
    sha256: str = ""


class ArtifactManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int = FORMAT_VERSION
    method: str
    artifact_kind: str
    base_model: BaseModelRef
    trigger_token: str | None = None
    instance_prompt: str
    resolution: int
    dataset_hash: str
    config: RunConfig | None = None  # the run that trained it
    imported_from: ImportRecord | None = None  # or the file it was converted from
    run_name: str | None = None
    mlflow_run_id: str | None = None
    steps: int
    dreamloom_version: str = __version__
    created_at: str = ""
    files: dict[str, str] = {}

    @model_validator(mode="before")
    @classmethod
    def _from_format_1(cls, document: Any) -> Any:
        """Format 1 kept the config as a plain dict, with ``imported_from`` inside it for imports."""
        if not isinstance(document, dict) or document.get("format") != 1:
            return document
        document = {**document, "format": FORMAT_VERSION}
        config = document.get("config") or {}
        if "imported_from" in config:
            document["config"] = None
            document["imported_from"] = {"source": str(config["imported_from"]), "format": "unknown"}
        return document

    @model_validator(mode="after")
    def _one_origin(self) -> ArtifactManifest:
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not one this dreamloom knows ({', '.join(METHODS)})")
        if (self.config is None) == (self.imported_from is None):
            raise ValueError("a manifest records the run config that trained it or the file it was imported from")
        if self.config is not None and self.config.method != self.method:
            raise ValueError(f"its config trains {self.config.method}, but it says it holds a {self.method} artifact")
        return self

    @property
    def method_type(self) -> type[TrainingMethod]:
        return get_method(self.method)

    def lineage(self) -> Lineage:
        return Lineage(
            method=self.method,
            artifact_kind=self.artifact_kind,
            base_model=self.base_model.spec,
            base_model_revision=str(self.base_model.revision),
            base_model_weights=self.base_model.weights,
            dataset_hash=self.dataset_hash,
            trigger_token=self.trigger_token or "",
            resolution=self.resolution,
            training_run_id=self.mlflow_run_id,
        )


def file_digests(folder: Path) -> dict[str, str]:
    digests = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE):
        digests[str(path.relative_to(folder))] = sha256_file(path)
    return digests


def write_manifest(folder: Path, manifest: ArtifactManifest) -> ArtifactManifest:
    stamped = manifest.model_copy(
        update={"files": file_digests(folder), "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
    )
    (folder / MANIFEST_FILE).write_text(stamped.model_dump_json(indent=1))
    return stamped


def read_manifest(folder: Path, verify: bool = True) -> ArtifactManifest:
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise ArtifactError(f"artifact folder {folder} does not exist")
    if not path.is_file():
        raise ArtifactError(f"{folder} is not a dreamloom artifact: it has no {MANIFEST_FILE}")
    try:
        manifest = ArtifactManifest.model_validate_json(path.read_text())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ArtifactError(f"{path} is not a valid manifest: {where + ': ' if where else ''}{first['msg']}") from None
    if verify:
        actual = file_digests(folder)
        damaged = sorted(name for name, digest in manifest.files.items() if actual.get(name) != digest)
        if damaged:
            raise ArtifactError(f"artifact {folder} is incomplete or modified: {', '.join(damaged[:5])}")
    return manifest


# ----- what an artifact may hold -----

_PICKLE_MEMBER = (".pkl", ".pickle", "data.pkl")


def file_kind(path: Path) -> str:
    """``safetensors``, ``json``, ``png``, ``pickle`` (by content, whatever the name says) or
    ``unknown``. Nothing here unpickles: containers are listed, not loaded."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    return _kind_of(head, path)


def _kind_of(head: bytes, path: Path | None = None) -> str:
    import gzip
    import io
    import tarfile
    import zipfile

    if head[:1] == b"\x80" and head[1:2] and 2 <= head[1] <= 5:  # PROTO opcode: a pickle, protocol 2-5
        return "pickle"
    if head.startswith(b"PK\x03\x04") and path is not None:  # torch.save's zip: data.pkl inside
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        return "pickle" if any(name.endswith(_PICKLE_MEMBER) for name in names) else "unknown"
    if head.startswith(b"\x1f\x8b"):  # gzip: look at what it holds
        try:
            inner = gzip.GzipFile(fileobj=io.BytesIO(head)).read(1024)
        except (OSError, EOFError):
            inner = b""
        return "pickle" if _kind_of(inner) == "pickle" else "unknown"
    if head[257:262] == b"ustar" and path is not None:
        with tarfile.open(path) as archive:
            names = archive.getnames()
        return (
            "pickle" if any(name.endswith((*_PICKLE_MEMBER, ".pt", ".pth", ".ckpt")) for name in names) else "unknown"
        )
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100 * 2**20:
        return "safetensors"  # an 8-byte header length, then the JSON header
    if head.lstrip()[:1] in (b"{", b"["):
        return "json"
    return "unknown"


def check_files(folder: Path, manifest: ArtifactManifest) -> None:
    """The folder holds exactly the files its manifest lists, every file the method writes among
    them, each safetensors, JSON or PNG by its content (a pickle is named whatever its suffix)."""
    folder = Path(folder)
    on_disk = {str(path.relative_to(folder)): path for path in folder.rglob("*") if path.is_file()}
    on_disk.pop(MANIFEST_FILE, None)
    unlisted = sorted(set(on_disk) - set(manifest.files))
    if unlisted:
        raise ArtifactError(f"{folder.name} holds files its manifest does not list: {', '.join(unlisted[:5])}")
    for needed in manifest.method_type.artifact_files:
        present = (
            any(name.startswith(needed) for name in manifest.files)
            if needed.endswith("/")
            else (needed in manifest.files)
        )
        if not present:
            raise ArtifactError(f"the {manifest.method} artifact lacks {needed}: it is not complete")
    for name, path in sorted(on_disk.items()):
        kind = file_kind(path)
        if kind == "pickle":
            raise ArtifactError(f"{name} is a pickle (by its content); dreamloom takes weights as safetensors only")
        if kind == "unknown":
            raise ArtifactError(f"{name} is not safetensors, JSON or PNG; an artifact holds nothing else")


def non_finite_tensors(folder: Path) -> list[str]:
    """``file:tensor`` of every floating-point tensor under ``folder`` holding NaN or infinity."""
    import torch
    from safetensors import safe_open

    broken = []
    for path in sorted(Path(folder).rglob("*.safetensors")):
        try:
            with safe_open(str(path), "pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                    tensor = handle.get_tensor(key)
                    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                        broken.append(f"{path.relative_to(folder)}:{key}")
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise ArtifactError(f"{path.name} is not a readable safetensors file: {exc}") from None
    return broken


def publish(source: Path, output: Path, manifest: ArtifactManifest) -> ArtifactManifest:
    """Copy ``source`` to ``output`` with its manifest; ``output`` appears complete or not at all, and
    not at all when a weight is not finite (a diverged run publishes nothing)."""
    broken = non_finite_tensors(source)
    if broken:
        raise ArtifactError(
            f"{len(broken)} tensors of the {manifest.method} artifact are not finite (e.g. {broken[0]}): "
            "the run diverged; nothing was published"
        )
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ArtifactError(f"output {output} exists and is not an empty folder; choose another --output")
    try:
        with staged_folder(output) as staging:
            shutil.copytree(source, staging, dirs_exist_ok=True)
            stamped = write_manifest(staging, manifest)
    except FileExistsError:
        raise ArtifactError(
            f"output folder {output} was filled while the artifact was written; nothing replaced"
        ) from None
    return stamped
