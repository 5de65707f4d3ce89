"""Keeping the libraries' own chatter (progress bars, warnings for things we handle) out of the way."""

from __future__ import annotations

import logging
import warnings


def quiet_library_logging() -> None:
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    for name in ("mlflow", "alembic", "urllib3", "filelock", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*torchvision.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module="diffusers")
