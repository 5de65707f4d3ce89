"""The serving store: a Triton model repository plus the adapter artifacts it serves.

    <store>/models/<model>/config.pbtxt            python backend, dynamic batching, inputs/outputs
    <store>/models/<model>/<N>/model.py            imports dreamloom.serving.triton_model
    <store>/models/<model>/<N>/serving.json        the routes model version N serves (immutable)
    <store>/adapters/<name>/<version>/             a copied artifact (immutable)

Versions only ever get added; Triton's version policy serves the newest ready one, so writing
version N+1 and asking Triton to load the model is a deploy, and the old version answers until
the new one is ready.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path

from dreamloom.artifacts import MANIFEST_FILE, read_manifest
from dreamloom.errors import DreamloomError
from dreamloom.files import staged_file, staged_folder
from dreamloom.models.precision import SERVING_PRECISIONS, inference_dtype
from dreamloom.serving.protocol import OUTPUT, TENSORS
from dreamloom.serving.routes import ROUTES_FILE, Routes
from dreamloom.settings import work_dir

DEFAULT_MODEL = "dreamloom"
# Triton's model-control and other admin APIs answer only requests carrying this key (a Kubernetes
# Secret in a cluster; locally a file in the store that only its owner can read).
ADMIN_KEY_ENV = "DREAMLOOM_TRITON_ADMIN_KEY"
ADMIN_KEY_FILE = "admin.key"
_ADMIN_KEY = re.compile(r"^[A-Za-z0-9_-]{24,256}$")  # it becomes part of tritonserver's flags
MODEL_PY = "from dreamloom.serving.triton_model import TritonPythonModel  # noqa: F401\n"


def default_store() -> Path:
    return work_dir() / "serving"


# What one request may cost, in megapixel-steps (width x height x steps / 1e6), by hardware: a GPU
# renders SDXL at 1024 px with 50 steps (52.4); a CPU, 512 px with 15 steps (3.9).
DEFAULT_REQUEST_COST = {"gpu": 60.0, "cpu": 4.0}


def model_config(
    name: str,
    max_batch_size: int = 8,
    gpu: bool = False,
    adapter_budget_mib: int = 512,
    max_request_cost: float | None = None,
    queue_timeout_s: float = 60.0,
    max_queue_size: int | None = None,
    precision: str = "auto",
    channels_last: bool = False,
    compile: bool = False,
) -> str:
    """config.pbtxt, built with Triton's own protobuf: every input but PROMPT optional, one UINT8
    H x W x 3 image out; a request costing more than ``max_request_cost`` megapixel-steps is refused
    (default by hardware); one waiting longer than ``queue_timeout_s`` or beyond ``max_queue_size``
    waiting requests (default 4 batches) is rejected at once with UNAVAILABLE (HTTP 503). The base
    is loaded in ``precision`` (auto: by hardware; see ``models.precision.inference_dtype``), in
    channels-last format if asked, and with ``compile`` its VAE decoder and (while no adapter
    changes it) its UNet are compiled and warmed up before a version reports ready."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as triton

    config = triton.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size)
    # Under load requests queue while a batch runs anyway; the delay only adds latency alone.
    config.dynamic_batching.max_queue_delay_microseconds = 2000
    queue = config.dynamic_batching.default_queue_policy
    queue.timeout_action = triton.ModelQueuePolicy.REJECT
    queue.default_timeout_microseconds = int(queue_timeout_s * 1e6)
    queue.allow_timeout_override = True  # a caller may ask to give up sooner
    queue.max_queue_size = max_queue_size if max_queue_size is not None else 4 * max_batch_size
    config.version_policy.latest.num_versions = 1
    for field_name, (tensor, datatype, _) in TENSORS.items():
        data_type = triton.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")
        config.input.add(name=tensor, data_type=data_type, dims=[1], optional=field_name != "prompt")
    config.output.add(name=OUTPUT, data_type=triton.TYPE_UINT8, dims=[-1, -1, 3])
    kind = triton.ModelInstanceGroup.KIND_GPU if gpu else triton.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(kind=kind, count=1)
    config.parameters["adapter_budget_mib"].string_value = str(adapter_budget_mib)
    inference_dtype("cuda" if gpu else "cpu", precision)  # refuses unknown or impossible ones before writing
    config.parameters["precision"].string_value = precision
    config.parameters["channels_last"].string_value = str(channels_last).lower()
    config.parameters["compile"].string_value = str(compile).lower()
    cost = max_request_cost if max_request_cost is not None else DEFAULT_REQUEST_COST["gpu" if gpu else "cpu"]
    config.parameters["max_request_megapixel_steps"].string_value = f"{cost:g}"
    return text_format.MessageToString(config)


class ServingStore:
    def __init__(self, root: Path | None = None):
        self.root = Path(root or default_store()).absolute()
        self.models = self.root / "models"
        self.adapters = self.root / "adapters"

    def admin_key(self, create: bool = False) -> str | None:
        """The key Triton's admin APIs ask for: ``DREAMLOOM_TRITON_ADMIN_KEY``, else the store's
        ``admin.key`` (mode 0600), which ``create`` makes on first use (``dreamloom serve``)."""
        key = os.environ.get(ADMIN_KEY_ENV) or self._read_admin_key()
        if key is None and create:
            key = self._create_admin_key()
        if key is not None and not _ADMIN_KEY.match(key):
            raise DreamloomError(
                f"the Triton admin key must be 24-256 letters, digits, '-' or '_' (check {ADMIN_KEY_ENV} "
                f"or {self.root / ADMIN_KEY_FILE})"
            )
        return key

    def _read_admin_key(self) -> str | None:
        path = self.root / ADMIN_KEY_FILE
        if not path.is_file():
            return None
        if path.stat().st_mode & 0o077:
            raise DreamloomError(f"{path} can be read by other users; `chmod 600` it (or delete it to make a new one)")
        return path.read_text().strip()

    def _create_admin_key(self) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(32)
        try:
            handle = os.open(self.root / ADMIN_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            return self._read_admin_key() or ""
        with os.fdopen(handle, "w") as file:
            file.write(key + "\n")
        return key

    def model_folder(self, model: str) -> Path:
        return self.models / model

    def versions(self, model: str) -> list[int]:
        folder = self.model_folder(model)
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / ROUTES_FILE).is_file())

    def latest_routes(self, model: str) -> Routes:
        versions = self.versions(model)
        if not versions:
            raise DreamloomError(
                f"the serving store {self.root} has no model {model!r}; start `dreamloom serve` with this --store first"
            )
        return Routes.load(self.model_folder(model) / str(versions[-1]))

    def ensure_model(self, model: str, base_model: str, **config) -> None:
        """Create the model serving ``base_model`` with no adapters, unless it exists."""
        if not self.versions(model):
            self.write_config(model, **config)
            self.add_version(model, Routes(base_model))

    def write_config(self, model: str, replace: bool = False, **config) -> None:
        """The model's config.pbtxt (kept if it exists, unless ``replace``: Triton reads it at the
        model's next load, so replace it only while Triton is stopped or before a load)."""
        path = self.model_folder(model) / "config.pbtxt"
        if replace or not path.is_file():
            with staged_file(path) as staging:
                staging.write_text(model_config(model, **config))

    def add_version(self, model: str, routes: Routes) -> int:
        """Write version N+1 with ``routes``, complete before it appears under its name."""
        folder = self.model_folder(model)
        version = (self.versions(model) or [0])[-1] + 1
        with staged_folder(folder / str(version)) as staging:
            (staging / "model.py").write_text(MODEL_PY)
            routes.save(staging)
        return version

    def remove_version(self, model: str, version: int) -> None:
        shutil.rmtree(self.model_folder(model) / str(version), ignore_errors=True)

    def remove_model(self, model: str) -> None:
        """Remove a model that has no versions left (a first deploy that failed)."""
        if self.versions(model):
            raise DreamloomError(f"Triton model {model!r} still has versions {self.versions(model)}; not removed")
        shutil.rmtree(self.model_folder(model), ignore_errors=True)

    def add_artifact(self, name: str, version: str, artifact: Path) -> Path:
        """Copy a verified artifact to ``adapters/<name>/<version>`` (kept if already there)."""
        target = self.adapters / name / str(version)
        if (target / MANIFEST_FILE).is_file():
            return target
        read_manifest(Path(artifact))  # digests checked: never copy a damaged artifact
        with staged_folder(target, exists="keep") as staging:  # another deploy may copy it first
            shutil.copytree(artifact, staging, dirs_exist_ok=True)
        read_manifest(target)
        return target


def add_acceleration_arguments(parser) -> None:
    """How the base runs: ``dreamloom serve`` and the chart's config step take the same flags."""
    parser.add_argument(
        "--precision",
        choices=SERVING_PRECISIONS,
        default="auto",
        help="dtype the base is served in (auto: fp16 on GPUs, bf16 on CPUs with native bf16, else fp32)",
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="UNet and VAE in channels-last memory format (faster on GPUs)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the VAE decoder and, unless adapters change it, the UNet; "
        "each version compiles before it reports ready (minutes on a CPU)",
    )


def main(argv: list[str] | None = None) -> None:
    """Write a fresh model repository (the checked-in ``serving/model_repository`` is one), or with
    ``--config-only`` rewrite an existing model's config.pbtxt (the chart does, before Triton starts)."""
    import argparse

    parser = argparse.ArgumentParser(description="Write a Triton model repository for a base model.")
    parser.add_argument("--out", type=Path, required=True, help="the repository folder (the store's models/)")
    parser.add_argument("--base-model", default="toy")
    parser.add_argument("--model-name", default=DEFAULT_MODEL)
    parser.add_argument("--gpu", action="store_true", help="KIND_GPU instances")
    parser.add_argument("--max-request-cost", type=float, help="megapixel-steps per request (default by hardware)")
    parser.add_argument("--queue-timeout-s", type=float, default=60.0)
    parser.add_argument("--max-queue-size", type=int)
    add_acceleration_arguments(parser)
    parser.add_argument("--config-only", action="store_true", help="rewrite config.pbtxt of an existing model")
    args = parser.parse_args(argv)
    store = ServingStore(Path(args.out).parent)
    store.models = Path(args.out).absolute()
    config = {
        "gpu": args.gpu,
        "max_request_cost": args.max_request_cost,
        "queue_timeout_s": args.queue_timeout_s,
        "max_queue_size": args.max_queue_size,
        "precision": args.precision,
        "channels_last": args.channels_last,
        "compile": args.compile,
    }
    if args.config_only:
        if not store.versions(args.model_name):
            raise DreamloomError(f"{store.models} has no model {args.model_name!r} to configure")
        store.write_config(args.model_name, replace=True, **config)
    else:
        store.ensure_model(args.model_name, args.base_model, **config)
    print(f"model repository in {store.models}")


if __name__ == "__main__":
    main()
