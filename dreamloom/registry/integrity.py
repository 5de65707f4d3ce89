"""What makes an artifact safe to register or to serve, read from its content alone.

Registration and deploys both ask ``check_artifact`` (a deploy reads the artifact back from the
registry's store, which may have changed since). The manifest's own sha256 is recorded on the
registered version, so that the list of files and digests it vouches for cannot be edited either.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dreamloom.artifacts import MANIFEST_FILE, ArtifactManifest, check_files, non_finite_tensors, read_manifest
from dreamloom.errors import ArtifactError
from dreamloom.files import sha256_file


def check_artifact(folder: Path) -> ArtifactManifest:
    """Refuse an artifact that is incomplete, altered, pickled, not finite, or does not fit its base:
    - every file matches the digest its manifest lists, and nothing unlisted is there;
    - every file its method writes is there; each is safetensors, JSON or PNG by content;
    - every weight is a finite number;
    - every tensor has the shape its base's architecture needs (modules on the meta device)."""
    from dreamloom.inference import artifact_base
    from dreamloom.sizing import Architecture

    folder = Path(folder)
    manifest = read_manifest(folder)
    check_files(folder, manifest)
    broken = non_finite_tensors(folder)
    if broken:
        raise ArtifactError(
            f"{len(broken)} weights of the {manifest.method} artifact are not finite (e.g. {broken[0]})"
        )
    base = artifact_base(manifest)  # findable here, at the recorded revision
    architecture = Architecture.for_base(base.location if base.is_local else base.spec)
    architecture = dataclasses.replace(architecture, name=manifest.base_model.spec)  # as users name it
    manifest.method_type.check_fit(folder, architecture, manifest.config)
    return manifest


def manifest_digest(folder: Path) -> str:
    return "sha256:" + sha256_file(Path(folder) / MANIFEST_FILE)


def check_manifest_digest(folder: Path, recorded: str | None, what: str) -> None:
    """The manifest is the one registered (``recorded``: the version's tag; None for versions
    registered before dreamloom recorded it)."""
    if recorded is not None and manifest_digest(folder) != recorded:
        raise ArtifactError(
            f"the manifest of {what} is not the one that was registered: the stored artifact was altered"
        )
