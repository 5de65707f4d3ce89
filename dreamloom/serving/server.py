"""A real ``tritonserver`` process on the serving store, from the nvidia-pytriton wheel.

The wheel ships the server binary, the python backend and a backend stub per Python version; the
server needs them assembled into a backend directory, the wheel's libraries and this Python's
``libpython`` on ``LD_LIBRARY_PATH``, and this virtual environment first on ``PATH`` so that the
stub imports the same packages (see ENVIRONMENT.md). Models load explicitly (model-control mode
``explicit``), which is what lets ``dreamloom deploy`` swap versions.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from dreamloom.errors import DreamloomError
from dreamloom.settings import free_port  # noqa: F401 (re-exported: callers start servers on it)

EXIT_TIMEOUT_S = 30
ADMIN_HEADER = "dreamloom-admin-key"
# Everything but health, metadata and inference asks for the admin key: a client of the inference
# port must not load, unload or configure models (a load with a file override runs its code).
RESTRICTED_APIS = ("model-repository", "model-config", "shared-memory", "statistics", "trace", "logging")


def _wheel() -> Path:
    try:
        import pytriton
    except ImportError:
        raise DreamloomError("tritonserver comes from the nvidia-pytriton wheel; run `make setup`") from None
    return Path(pytriton.__file__).parent / "tritonserver"


def backend_directory(target: Path) -> Path:
    """``<target>/python`` with the python backend and this Python's stub, as Triton expects."""
    wheel = _wheel()
    python = target / "python"
    python.mkdir(parents=True, exist_ok=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    sources = [
        wheel / "backends" / "python" / "libtriton_python.so",
        wheel / "backends" / "python" / "triton_python_backend_utils.py",
        wheel / "python_backend_stubs" / version / "triton_python_backend_stub",
    ]
    for source in sources:
        if not source.is_file():
            raise DreamloomError(f"the pytriton wheel lacks {source.name} for Python {version}")
        destination = python / source.name
        if not destination.exists() or destination.stat().st_size != source.stat().st_size:
            shutil.copy2(source, destination)
    return target


def server_environment() -> dict[str, str]:
    wheel = _wheel()
    libraries = [str(wheel.parent.parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
    environment = dict(os.environ)
    environment["LD_LIBRARY_PATH"] = os.pathsep.join([*libraries, environment.get("LD_LIBRARY_PATH", "")])
    environment["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environment.get("PATH", "")])
    return environment


@dataclass
class TritonServer:
    repository: Path
    models: list[str]
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    log_file: Path | None = None
    host: str = "127.0.0.1"
    admin_key: str | None = field(default=None, repr=False)
    process: subprocess.Popen | None = field(default=None, repr=False)

    @classmethod
    def for_store(cls, store, models: list[str], http_port: int = 8000, grpc_port: int = 8001,
                  metrics_port: int = 8002, **options) -> TritonServer:  # fmt: skip
        """A server on ``store``'s model repository, its admin APIs behind the store's key."""
        return cls(store.models, models, http_port, grpc_port, metrics_port,
                   admin_key=store.admin_key(create=True), **options)  # fmt: skip

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        import torch

        if not self.admin_key:
            raise DreamloomError(
                "refusing to start Triton with its model-control API open to every client; give it an "
                "admin key (TritonServer.for_store, or admin_key=)"
            )
        wheel = _wheel()
        backends = backend_directory(Path(self.repository).parent / "backends")
        restricted = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={self.admin_key}"
        return [
            str(wheel / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            "--model-control-mode=explicit",
            *[f"--load-model={model}" for model in self.models],
            f"--backend-directory={backends}",
            f"--cache-directory={wheel / 'caches'}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            f"--allow-gpu-metrics={'true' if torch.cuda.is_available() else 'false'}",
            f"--http-restricted-api={restricted}",
            f"--grpc-restricted-protocol={restricted}",
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
            "--log-verbose=0",
        ]

    def start(self, timeout_s: float = 300, progress: bool = False) -> TritonServer:
        log_file = self.log_file or Path(self.repository).parent / "tritonserver.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = log_file
        with log_file.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=server_environment(), start_new_session=True
            )
        self.wait_ready(timeout_s, progress)
        return self

    def wait_ready(self, timeout_s: float, progress: bool = False) -> None:
        from dreamloom.progress import StatusLine

        started, status = time.monotonic(), StatusLine()
        try:
            while time.monotonic() - started < timeout_s:
                if self.process is not None and self.process.poll() is not None:
                    raise DreamloomError(f"tritonserver exited with {self.process.returncode}:\n{self.log_tail()}")
                if self.ready():
                    return
                if progress:
                    waited = time.monotonic() - started
                    status.show(f"[dreamloom] waiting for Triton to load {', '.join(self.models)}: {waited:.0f} s")
                time.sleep(0.25)
        finally:
            status.close()
        self.stop()
        raise DreamloomError(f"tritonserver was not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        """Every model it serves is ready (the server's own health stays 200 with a model unloaded)."""
        return all(self._answers(f"/v2/models/{model}/ready") for model in self.models)

    def _answers(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_file or not self.log_file.is_file():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, then Triton drains in-flight requests for up to its exit timeout."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(EXIT_TIMEOUT_S + 10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> TritonServer:
        return self if self.process else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
