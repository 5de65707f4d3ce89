"""Run one of diffusers' training example scripts from a checkout of huggingface/diffusers, as is,
except for its ``from torchvision import transforms`` line, which is pointed at
``bench/pil_transforms.py`` (no CPU torchvision wheel imports here; see that module).

    python bench/diffusers_script.py DIFFUSERS_CHECKOUT examples/dreambooth/train_dreambooth_lora.py -- ARGS...

The script's source is read from the checkout at run time; nothing of it is copied into dreamloom.
"""

from __future__ import annotations

import sys
from pathlib import Path

TORCHVISION_IMPORT = "from torchvision import transforms"


def run(checkout: Path, script: str, arguments: list[str]) -> None:
    path = checkout / script
    source = path.read_text()
    if source.count(TORCHVISION_IMPORT) != 1:
        raise SystemExit(f"{path}: expected one '{TORCHVISION_IMPORT}' line; this runner does not know this version")
    source = source.replace(TORCHVISION_IMPORT, "import pil_transforms as transforms")
    sys.path.insert(0, str(Path(__file__).parent))
    sys.argv = [str(path), *arguments]
    exec(compile(source, str(path), "exec"), {"__name__": "__main__", "__file__": str(path)})


if __name__ == "__main__":
    checkout, script, separator, *rest = sys.argv[1:]
    if separator != "--":
        raise SystemExit(__doc__)
    run(Path(checkout), script, rest)
