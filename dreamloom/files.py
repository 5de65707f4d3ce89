"""Files and folders that appear whole or not at all, and their content digests.

Everything dreamloom publishes (artifacts, prepared datasets, model-repository versions, cached
models, rendered jobs) is written into a staging folder beside its target, and one rename makes
it visible: a reader never sees half of it, and an error or a kill leaves only a dot-named
staging folder that the next attempt does not look at.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

WhenTargetExists = Literal["refuse", "replace", "keep"]


@contextmanager
def staged_folder(target: Path, exists: WhenTargetExists = "refuse") -> Iterator[Path]:
    """A fresh folder beside ``target`` to write into; when the block ends it becomes ``target``
    in one rename, and when the block raises it is deleted and ``target`` is left as it was.

    A missing or empty ``target`` is always replaced. A non-empty one, by ``exists``: ``refuse``
    raises ``FileExistsError``; ``replace`` swaps it out and deletes it; ``keep`` keeps it and
    drops what was staged (another writer finished the same content first)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 would hide it from other users once published
    try:
        yield staging
        _move_into_place(staging, target, exists)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def staged_file(target: Path) -> Iterator[Path]:
    """A temporary path beside ``target`` to write one file to; it replaces ``target`` when the
    block ends, and is deleted when the block raises."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
    os.close(handle)
    staging = Path(name)
    os.chmod(staging, 0o666 & ~_umask())
    try:
        yield staging
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)


def _move_into_place(staging: Path, target: Path, exists: WhenTargetExists) -> None:
    try:
        os.replace(staging, target)  # POSIX rename replaces a missing target or an empty folder
        return
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    if exists == "keep":
        return
    if exists == "refuse":
        raise FileExistsError(errno.EEXIST, "folder exists and is not empty", str(target))
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, retired / target.name)
    os.replace(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def _umask() -> int:
    """The process's umask, read without changing it (os.umask sets it to read it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
