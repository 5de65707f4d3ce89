"""MLflow tracking: one MLflow run per training run, written by the driver and by rank 0.

The driver creates (or, on resume, reopens) the run and records the config, lineage tags and
the final artifact; the rank-0 worker logs loss, learning rate, throughput, memory and the
sample grids while training.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dreamloom import __version__
from dreamloom.settings import local_artifact_root, tracking_uri

RUN_NAME_TAG = "dreamloom.run_name"


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
            filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if previous:
            run_id = previous[0].info.run_id
            mlflow_client.update_run(run_id, status="RUNNING")
            return run_id
    run = mlflow_client.create_run(
        experiment_key, run_name=run_name, tags={RUN_NAME_TAG: run_name, "dreamloom.version": __version__, **tags}
    )
    return run.info.run_id


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
        self._client.log_image(self.run_id, image, key=name, step=step)
        self._client.log_image(self.run_id, image, artifact_file=f"{name}/step_{step:06d}.png")

    def artifact(self, path: Path, folder: str | None = None) -> None:
        self._client.log_artifact(self.run_id, str(path), folder)
