"""How every bench script ends: the report as JSON on stdout and, with ``--out``, in a file (and,
for the benches that make one, its markdown table beside it)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def emit(report: dict, out: Path | None) -> None:
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


def emit_with_table(report: dict, table: str, out: Path | None, name: str) -> None:
    """The report as JSON and its table as markdown, printed, and with ``out`` (a folder) written
    there as ``NAME.json`` and ``NAME.md``."""
    text = json.dumps(report, indent=2)
    print(text)
    print(table)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(text)
        (out / f"{name}.md").write_text(table)


def bench_process(threads: int) -> None:
    """What every training bench sets first: a work folder of its own (kept between runs, so the
    toy base and prepared sets are cached), the torch threads it reports, quiet library logs."""
    import torch

    from dreamloom.logs import quiet_library_logging

    os.environ.setdefault("DREAMLOOM_HOME", str(Path(tempfile.gettempdir()) / "dreamloom-bench"))
    torch.set_num_threads(threads)
    quiet_library_logging()
