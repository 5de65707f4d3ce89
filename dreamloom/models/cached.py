"""Pipeline folders that dreamloom builds itself (the tiny and random-weight bases), kept in the
cache folder and built once."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from dreamloom.files import staged_folder
from dreamloom.settings import cache_dir


def cached_pipeline_folder(name: str, save: Callable[[Path], None], announce: str | None = None) -> Path:
    """``<cache>/models/<name>``, written by ``save(folder)`` on first use. Concurrent first uses
    each build, and the first to finish wins (the same seed gives the same weights)."""
    target = cache_dir() / "models" / name
    if (target / "model_index.json").is_file():
        return target
    if announce:
        print(f"[dreamloom] {announce} into {target} (once)", file=sys.stderr, flush=True)
    with staged_folder(target, exists="keep") as staging:
        save(staging)
    return target
