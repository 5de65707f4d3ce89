"""Artifact folders: a method's weights plus the manifest ``dreamloom.json`` that describes them.

The manifest says what the weights are (method, base model and revision, trigger token,
resolution), where they came from (dataset hash, run config, MLflow run) and which files belong
to the artifact (with their sha256), so that anything loading an artifact can check it first.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from dreamloom import __version__
from dreamloom.errors import ArtifactError

MANIFEST_FILE = "dreamloom.json"
FORMAT_VERSION = 1


class ArtifactManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int = FORMAT_VERSION
    method: str
    artifact_kind: str
    base_model: dict[str, Any]
    trigger_token: str | None = None
    instance_prompt: str
    resolution: int
    dataset_hash: str
    config: dict[str, Any]
    run_name: str | None = None
    mlflow_run_id: str | None = None
    steps: int
    dreamloom_version: str = __version__
    created_at: str = ""
    files: dict[str, str] = {}


def file_digests(folder: Path) -> dict[str, str]:
    digests = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digests[str(path.relative_to(folder))] = digest.hexdigest()
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
        raise ArtifactError(f"{path} is not a valid manifest: {exc.errors()[0]['msg']}") from None
    if verify:
        actual = file_digests(folder)
        damaged = sorted(name for name, digest in manifest.files.items() if actual.get(name) != digest)
        if damaged:
            raise ArtifactError(f"artifact {folder} is incomplete or modified: {', '.join(damaged[:5])}")
    return manifest


def publish(source: Path, output: Path, manifest: ArtifactManifest) -> ArtifactManifest:
    """Copy ``source`` to ``output`` with its manifest; ``output`` appears complete or not at all."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        stamped = write_manifest(staging, manifest)
        if output.exists():
            if any(output.iterdir()):
                raise ArtifactError(f"output folder {output} is not empty; choose another --output")
            output.rmdir()
        os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return stamped
