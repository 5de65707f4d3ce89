"""Where dreamloom keeps things on disk, and the quiet defaults for the engines it drives.

- the work folder (``DREAMLOOM_HOME``, default ``./.dreamloom``): MLflow's SQLite file and
  artifacts, prepared datasets, Ray run storage and Ray's session files;
- the cache folder (``DREAMLOOM_CACHE``, default ``~/.cache/dreamloom``): things that are the
  same for every project on the machine, such as the offline tiny base models.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

# Unix domain sockets are limited to 107 bytes; Ray puts its sockets under its temp folder at
# "/session_YYYY-MM-DD_HH-MM-SS_ffffff_PID/sockets/plasma_store" (63 bytes with a 7-digit pid).
_RAY_SOCKET_PATH_BUDGET = 107 - 63


def work_dir() -> Path:
    path = Path(os.environ.get("DREAMLOOM_HOME") or Path.cwd() / ".dreamloom").absolute()
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dreamloom"
    path = Path(os.environ.get("DREAMLOOM_CACHE") or default).absolute()
    path.mkdir(parents=True, exist_ok=True)
    return path


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite file in the work folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{work_dir() / 'mlflow.db'}"


def local_artifact_root() -> Path:
    """Where runs tracked in the default SQLite store keep their artifacts."""
    return work_dir() / "mlartifacts"


def ray_temp_dir() -> Path:
    """Ray's session folder: inside the work folder unless that path is too long for sockets."""
    preferred = work_dir() / "ray"
    if len(str(preferred)) <= _RAY_SOCKET_PATH_BUDGET:
        preferred.mkdir(parents=True, exist_ok=True)
        return preferred
    # One per work folder: runs of different work folders never share Ray's session files.
    digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:8]
    fallback = Path(tempfile.gettempdir()) / f"dlray-{os.getuid()}-{digest}"
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def local_ray_cpus() -> int:
    """The cores a Ray started on this machine offers: ``DREAMLOOM_RAY_CPUS``, else all of them
    (tests running two processes side by side on two cores give each one)."""
    value = os.environ.get("DREAMLOOM_RAY_CPUS", "").strip()
    return max(1, int(value)) if value.isdigit() else os.cpu_count() or 1


def apply_quiet_defaults() -> None:
    """Turn off telemetry and phoning home; keep Ray's files contained. User settings win."""
    defaults = {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_LOGGING_LEVEL": "WARNING",
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "DO_NOT_TRACK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_TMPDIR": str(ray_temp_dir()),
        "RAY_DEDUP_LOGS": "0",
        # Ray Train routes print() through a logger and also tees it: every line twice.
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
        # Ray's distributed tqdm (unused here) replaces builtins.print with one bound to whatever
        # print was when Ray was imported: inside KFP's local runner, an indenting one, for good.
        "RAY_TQDM_PATCH_PRINT": "0",
        "TOKENIZERS_PARALLELISM": "false",
        "DIFFUSERS_VERBOSITY": "error",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    if not sys.stdout.isatty():  # a log file or a pipe: Ray's worker prefixes without colour codes
        defaults["RAY_COLOR_PREFIX"] = "0"
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


IMAGE_REPOSITORY = "ghcr.io/dreamloom/dreamloom"


def container_image() -> str:
    """The image the pipeline's components and the Ray workers run: ``DREAMLOOM_IMAGE`` names one
    outright; ``DREAMLOOM_IMAGE_DIGEST`` (``sha256:...``, what the push printed) pins the built image
    by digest, as a pipeline uploaded to a cluster should be (a tag can be moved to other code, a
    digest cannot; ``components`` refuses a malformed one); otherwise this version's tag, for local
    runs and kind."""
    from dreamloom import __version__

    if image := os.environ.get("DREAMLOOM_IMAGE"):
        return image
    if digest := os.environ.get("DREAMLOOM_IMAGE_DIGEST"):
        return f"{IMAGE_REPOSITORY}@{digest}"
    return f"{IMAGE_REPOSITORY}:{__version__}"


def redacted(uri: str) -> str:
    """``uri`` fit to print or log: a ``user:password@`` in it becomes ``***@``."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def without_credentials(uri: str) -> str:
    """``uri`` with no ``user:password@``: what may travel to a job, whose own environment (a
    cluster's Secrets) holds the credentials."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1])) if "@" in parts.netloc else uri


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
