"""A small client for the serving endpoint, over HTTP or gRPC (tritonclient).

client = ServingClient("localhost:8000")
image = client.generate(ImageRequest("a sks shape on a gray background", adapter="hexagon@champion"))
images = client.generate_many(requests, concurrency=4, progress=True)
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dreamloom.errors import EXIT_INPUT, EXIT_REFUSED, EXIT_UNREACHABLE, DreamloomError
from dreamloom.serving.protocol import OUTPUT, TENSORS, ImageRequest, to_arrays
from dreamloom.serving.repository import ADMIN_KEY_ENV, DEFAULT_MODEL
from dreamloom.serving.server import ADMIN_HEADER

_DATATYPES = {tensor: datatype for tensor, datatype, _ in TENSORS.values()}


class ServingError(DreamloomError):
    """The server refused a request, failed it, or could not be reached. ``status`` is Triton's
    (HTTP "400", gRPC "StatusCode.INVALID_ARGUMENT", ...); ``refused`` says the request itself was
    at fault, so sending it again cannot help."""

    def __init__(self, message: str, status: str | None = None, unreachable: bool = False):
        super().__init__(message)
        self.status = status
        self.unreachable = unreachable

    @property
    def refused(self) -> bool:
        return self.status in ("400", "StatusCode.INVALID_ARGUMENT")

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        if self.unreachable or self.status in ("503", "StatusCode.UNAVAILABLE"):
            return EXIT_UNREACHABLE
        return EXIT_INPUT if self.refused else EXIT_REFUSED


class ServingClient:
    def __init__(self, url: str, protocol: str = "http", model: str = DEFAULT_MODEL, admin_key: str | None = None):
        if protocol not in ("http", "grpc"):
            raise DreamloomError(f"protocol must be http or grpc (got {protocol!r})")
        self.url, self.protocol, self.model = url.removeprefix("http://"), protocol, model
        self._admin_key = admin_key  # sent only on model-control and statistics calls
        if protocol == "http":
            import tritonclient.http as triton
        else:
            import tritonclient.grpc as triton
        self._triton = triton
        self._local = threading.local()
        self._connections: list = []
        self._lock = threading.Lock()

    @property
    def _client(self):
        """This thread's connection: tritonclient's HTTP client runs on gevent and must not be
        shared between threads."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            if self.protocol == "http":
                connection = self._triton.InferenceServerClient(self.url, network_timeout=600)
            else:
                connection = self._triton.InferenceServerClient(self.url)
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def generate(self, request: ImageRequest, model: str | None = None, check: bool = True) -> np.ndarray:
        """One image (H x W x 3 uint8); a refused request raises ServingError with the server's reason.
        ``check=False`` sends what the server would refuse (to test the server)."""
        if check:
            request.check()
        inputs = []
        for name, array in to_arrays(request).items():
            tensor = self._triton.InferInput(name, list(array.shape), _DATATYPES[name])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        try:
            result = self._client.infer(
                model or self.model, inputs, outputs=[self._triton.InferRequestedOutput(OUTPUT)]
            )
        except Exception as exc:  # tritonclient raises InferenceServerException (and socket errors)
            raise self._error(exc) from None
        return result.as_numpy(OUTPUT)[0]

    def generate_many(
        self, requests: list[ImageRequest], concurrency: int = 4, progress: bool = False, model: str | None = None
    ) -> list[np.ndarray]:
        """Images for ``requests``, ``concurrency`` in flight (so the server can batch them)."""
        from dreamloom.progress import StatusLine

        done, started, status = 0, time.monotonic(), StatusLine()
        results: list[np.ndarray] = []
        with ThreadPoolExecutor(concurrency) as pool:
            for image in pool.map(lambda r: self.generate(r, model), requests):
                results.append(image)
                done += 1
                if progress:
                    rate = done / max(time.monotonic() - started, 1e-9)
                    status.show(f"[dreamloom] {done}/{len(requests)} images ({rate:.1f}/s)")
        status.close()
        return results

    def ready(self, model: str | None = None) -> bool:
        try:
            return bool(self._client.is_model_ready(model or self.model))
        except Exception:
            return False

    # ----- admin calls: they carry the admin key -----

    def statistics(self, model: str | None = None) -> dict:
        """Triton's inference statistics for ``model`` (counts and nanoseconds per phase)."""
        options = {"as_json": True} if self.protocol == "grpc" else {}
        return self._admin("read statistics", self._client.get_inference_statistics, model or self.model, **options)

    def load_model(self, model: str | None = None) -> None:
        self._admin(f"load {model or self.model}", self._client.load_model, model or self.model)

    def unload_model(self, model: str | None = None) -> None:
        self._admin(f"unload {model or self.model}", self._client.unload_model, model or self.model)

    def model_versions(self, model: str | None = None) -> list[int]:
        """The versions Triton reports READY for ``model``."""
        index = self._admin("read the model repository", self._client.get_model_repository_index)
        if self.protocol == "grpc":
            index = [{"name": m.name, "version": m.version, "state": m.state} for m in index.models]
        return sorted(
            int(entry["version"])
            for entry in index
            if entry.get("name") == (model or self.model) and entry.get("state") == "READY" and entry.get("version")
        )

    def _admin(self, what: str, call, *args, **options):
        headers = {ADMIN_HEADER: self._admin_key} if self._admin_key else None
        try:
            return call(*args, headers=headers, **options)
        except Exception as exc:
            if _unreachable(exc):
                raise self._error(exc) from None
            message = _message(exc)
            if "restricted" in message:
                raise ServingError(
                    f"Triton at {self.url} refused to {what}: it needs the admin key (set {ADMIN_KEY_ENV}, or "
                    "pass the --store the server was started with)"
                ) from None
            raise ServingError(f"Triton could not {what}: {message}") from None

    def _error(self, exc: Exception) -> ServingError:
        if _unreachable(exc):
            return ServingError(
                f"could not reach Triton at http://{self.url} ({_message(exc)}); start it with `dreamloom serve`, "
                "or pass --url with its address",
                unreachable=True,
            )
        status = exc.status() if callable(getattr(exc, "status", None)) else None
        return ServingError(_message(exc), None if status is None else str(status))

    def close(self) -> None:
        """Close the connections (an open keep-alive connection delays Triton's shutdown)."""
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
        self._local = threading.local()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _unreachable(exc: Exception) -> bool:
    """No answer at all: refused, reset or timed-out connections (tritonclient passes socket errors
    through over HTTP and reports them as UNAVAILABLE over gRPC)."""
    if isinstance(exc, OSError):
        return True
    status = exc.status() if callable(getattr(exc, "status", None)) else None
    return status == "StatusCode.UNAVAILABLE" and "connect" in _message(exc).lower()


def _message(exc: Exception) -> str:
    message = getattr(exc, "message", None)
    text = message() if callable(message) else str(exc)
    return text or type(exc).__name__
