"""MLflow tracking: one MLflow run per training run, written by the driver and by rank 0, and the
one home of the tag keys dreamloom writes on runs and model versions.

The driver creates (or, on resume, reopens) the run and records the config, lineage tags and
the final artifact; the rank-0 worker logs loss, learning rate, throughput, memory and the
sample grids while training. ``Lineage`` is what a registered version says about where it came
from, as typed data and as the tags MLflow keeps.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from dreamloom import __version__
from dreamloom.settings import local_artifact_root, tracking_uri


class Tag(StrEnum):
    """Every MLflow tag key dreamloom writes (runs, registered models, model versions)."""

    RUN_NAME = "dreamloom.run_name"
    VERSION = "dreamloom.version"
    METHOD = "dreamloom.method"
    ARTIFACT_KIND = "dreamloom.artifact_kind"
    BASE_MODEL = "dreamloom.base_model"
    BASE_MODEL_LOCATION = "dreamloom.base_model_location"
    BASE_MODEL_REVISION = "dreamloom.base_model_revision"
    BASE_MODEL_WEIGHTS = "dreamloom.base_model_weights"  # "random" for sd15-random and its kin
    DATASET_HASH = "dreamloom.dataset_hash"
    TRIGGER_TOKEN = "dreamloom.trigger_token"
    RESOLUTION = "dreamloom.resolution"
    TRAINING_RUN_ID = "dreamloom.training_run_id"
    MANIFEST_SHA256 = "dreamloom.manifest_sha256"  # the registered artifact's dreamloom.json
    EVAL_CLIP_ENCODER = "dreamloom.eval.clip_encoder"
    EVAL_DINO_ENCODER = "dreamloom.eval.dino_encoder"
    EVAL_RUN_ID = "dreamloom.eval_run_id"
    METRIC_PREFIX = "dreamloom.metric."  # + metric name: a version's evaluation, for the gate
    PROMOTED_AT = "dreamloom.promoted_at"
    PREVIOUS_CHAMPION = "dreamloom.previous_champion"
    FORCED_REASON = "dreamloom.forced_reason"
    ROLLED_BACK_AT = "dreamloom.rolled_back_at"


class Lineage(BaseModel):
    """Where a registered version came from: what trained it, on which base and data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str
    artifact_kind: str
    base_model: str
    base_model_revision: str
    dataset_hash: str
    base_model_weights: str = "pretrained"
    trigger_token: str = ""
    resolution: int = 0
    dreamloom_version: str = __version__
    training_run_id: str | None = None

    def tags(self) -> dict[str, str]:
        tags = {
            Tag.METHOD: self.method,
            Tag.ARTIFACT_KIND: self.artifact_kind,
            Tag.BASE_MODEL: self.base_model,
            Tag.BASE_MODEL_REVISION: self.base_model_revision,
            Tag.BASE_MODEL_WEIGHTS: self.base_model_weights,
            Tag.DATASET_HASH: self.dataset_hash,
            Tag.TRIGGER_TOKEN: self.trigger_token,
            Tag.RESOLUTION: str(self.resolution),
            Tag.VERSION: self.dreamloom_version,
        }
        if self.training_run_id:
            tags[Tag.TRAINING_RUN_ID] = self.training_run_id
        return plain(tags)

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Lineage:
        return cls(
            method=tags.get(Tag.METHOD, "?"),
            artifact_kind=tags.get(Tag.ARTIFACT_KIND, "?"),
            base_model=tags.get(Tag.BASE_MODEL, "?"),
            base_model_revision=tags.get(Tag.BASE_MODEL_REVISION, "?"),
            base_model_weights=tags.get(Tag.BASE_MODEL_WEIGHTS, "pretrained"),
            dataset_hash=tags.get(Tag.DATASET_HASH, "?"),
            trigger_token=tags.get(Tag.TRIGGER_TOKEN, ""),
            resolution=int(tags.get(Tag.RESOLUTION, "0") or 0),
            dreamloom_version=tags.get(Tag.VERSION, "?"),
            training_run_id=tags.get(Tag.TRAINING_RUN_ID),
        )


def client(uri: str | None = None):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri or tracking_uri())


def experiment_id(mlflow_client, name: str) -> str:
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if mlflow_client.tracking_uri.startswith("sqlite:"):
        artifact_location = local_artifact_root().as_uri()
    return mlflow_client.create_experiment(name, artifact_location=artifact_location)


def open_run(mlflow_client, experiment: str, run_name: str, resume: bool, tags: dict[str, str]) -> str:
    """A new run, or with ``resume`` the latest run of that name, marked running again."""
    experiment_key = experiment_id(mlflow_client, experiment)
    if resume:
        previous = mlflow_client.search_runs(
            [experiment_key],
            filter_string=f"tags.`{Tag.RUN_NAME}` = '{run_name}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if previous:
            run_id = previous[0].info.run_id
            mlflow_client.update_run(run_id, status="RUNNING")
            return run_id
    run = mlflow_client.create_run(
        experiment_key, run_name=run_name, tags=plain({Tag.RUN_NAME: run_name, Tag.VERSION: __version__, **tags})
    )
    return run.info.run_id


def plain(tags: dict) -> dict[str, str]:
    """Tags with plain ``str`` keys and values, as MLflow's clients expect."""
    return {str(key): str(value) for key, value in tags.items()}


def flatten(document: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in document.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat


class MetricsLogger:
    """Buffers metrics and sends them in batches, so that logging never slows the step down."""

    def __init__(self, uri: str, run_id: str, flush_every_s: float = 5.0):
        self._client = client(uri)
        self.run_id = run_id
        self._pending: list = []
        self._flush_every_s = flush_every_s
        self._last_flush = time.monotonic()

    def log(self, step: int, **values: float) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self._pending += [Metric(key, float(value), stamp, step) for key, value in values.items()]
        if time.monotonic() - self._last_flush > self._flush_every_s:
            self.flush()

    def flush(self) -> None:
        for start in range(0, len(self._pending), 1000):  # MLflow's batch limit
            self._client.log_batch(self.run_id, metrics=self._pending[start : start + 1000])
        self._pending = []
        self._last_flush = time.monotonic()

    def image(self, image, step: int, name: str = "samples") -> None:
        log_picture(self._client, self.run_id, image, name, f"{name}/step_{step:06d}.png", step)


def log_picture(mlflow, run_id: str, image, key: str, artifact_file: str, step: int = 0) -> None:
    """A picture twice: as an MLflow image under ``key`` (the run page's image panel, with a step
    slider) and as a plain file at ``artifact_file`` (a stable path for links and downloads)."""
    mlflow.log_image(run_id, image, key=key, step=step)
    mlflow.log_image(run_id, image, artifact_file=artifact_file)
