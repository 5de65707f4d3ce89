"""How every bench script ends: the report as JSON on stdout and, with ``--out``, in a file (and,
for the benches that make one, its markdown table beside it)."""

from __future__ import annotations

import json
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
