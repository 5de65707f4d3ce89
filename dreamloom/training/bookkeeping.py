"""A local run's MLflow bookkeeping and its artifact: the run opened (or reopened on resume) with
its config, lineage tags and dataset; the final metrics; the artifact published from the last
checkpoint with a manifest that says what it is and where it came from."""

from __future__ import annotations

from pathlib import Path

from dreamloom import artifacts
from dreamloom.config import RunConfig, dump_run_config
from dreamloom.data.prepare import PreparedDataset
from dreamloom.errors import DreamloomError
from dreamloom.models.base import BaseModelRef
from dreamloom.progress import PhaseClock
from dreamloom.settings import tracking_uri
from dreamloom.training.job import ARTIFACT_FOLDER, WORKER_PHASE_PREFIX


def tracking_client():
    from dreamloom.tracking import client

    return client(tracking_uri())


def open_tracking_run(mlflow, config: RunConfig, base: BaseModelRef, dataset: PreparedDataset, resume: bool) -> str:
    from dreamloom.tracking import Tag, flatten, open_run

    tags = {
        Tag.METHOD: config.method,
        Tag.BASE_MODEL: base.spec,
        Tag.BASE_MODEL_LOCATION: base.location,
        Tag.BASE_MODEL_WEIGHTS: base.weights,
        Tag.BASE_MODEL_REVISION: str(base.revision),
        Tag.DATASET_HASH: dataset.dataset_hash,
    }
    run_id = open_run(mlflow, config.experiment, config.effective_run_name, resume, tags)
    if not resume:
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in flatten(config.model_dump(mode="json")).items()]
        params += [Param("dataset.images", str(len(dataset.items))), Param("base_model.revision", str(base.revision))]
        for start in range(0, len(params), 100):
            mlflow.log_batch(run_id, params=params[start : start + 100])
        mlflow.log_text(run_id, dump_run_config(config), "run.yaml")
        mlflow.log_artifact(run_id, str(dataset.root / "dataset.json"), "dataset")
        log_dataset_input(mlflow, run_id, config, dataset)
    return run_id


def log_dataset_input(tracking, run_id: str, config: RunConfig, dataset: PreparedDataset) -> None:
    """The run's training data as an MLflow dataset input (the UI's Datasets column): where the
    originals are and the prepared set's content digest, so two runs on the same pictures show it."""
    from mlflow.data.meta_dataset import MetaDataset  # first: importing mlflow.data defines its sources
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import DatasetInput, InputTag

    source = Path(dataset.source or config.data.path).absolute()
    digest = dataset.dataset_hash.split(":")[-1][:32]  # MLflow keeps at most 36 characters
    # MLflow keeps one dataset per (experiment, name, digest): named by its folder alone, the same
    # pictures in another folder would show the first folder's source on every later run.
    entity = MetaDataset(LocalArtifactDatasetSource(str(source)), name=str(source), digest=digest)._to_mlflow_entity()
    context = InputTag("mlflow.data.context", "training")
    tracking.log_inputs(run_id, datasets=[DatasetInput(entity, tags=[context])])


def run_phases(driver: PhaseClock, worker_metrics: dict) -> PhaseClock:
    """The driver's phases with Ray Train's share broken down: what rank 0 reported of its own
    phases, and the rest (starting and stopping the workers, persisting checkpoints) as Ray Train's."""
    phases = PhaseClock()
    reported = {
        key.removeprefix(WORKER_PHASE_PREFIX): float(value)
        for key, value in worker_metrics.items()
        if key.startswith(WORKER_PHASE_PREFIX)
    }
    for name, seconds in driver.seconds.items():
        if name != "ray_train":
            phases.add(name, seconds)
            continue
        for worker_phase, worker_seconds in reported.items():
            phases.add(worker_phase, worker_seconds)
        phases.add("ray_train_workers", max(0.0, seconds - sum(reported.values())))
    return phases


def log_final_metrics(mlflow, run_id: str, metrics: dict, phases: PhaseClock, step: int) -> None:
    """The run's steady step time and peak memory, and the seconds of each phase (``seconds/<phase>``)."""
    from mlflow.entities import Metric

    keys = ("median_step_seconds", "peak_memory_bytes")
    values = [Metric(f"final_{k}", float(metrics[k]), 0, step) for k in keys if k in metrics]
    values += [Metric(f"seconds/{name}", seconds, 0, step) for name, seconds in phases.seconds.items()]
    values.append(Metric("seconds/total", phases.total, 0, step))
    mlflow.log_batch(run_id, metrics=values)


def publish_from_checkpoint(config: RunConfig, base: BaseModelRef, dataset: PreparedDataset, result, run_id: str):
    """The artifact the last checkpoint of a Ray Train result holds, published to ``config.output``."""
    if result.checkpoint is None:
        raise DreamloomError("training finished without a checkpoint; nothing to publish")
    with result.checkpoint.as_directory() as folder:
        source = Path(folder) / ARTIFACT_FOLDER
        if not source.is_dir():
            raise DreamloomError(f"the last checkpoint of run {config.effective_run_name!r} holds no artifact")
        steps = int(result.metrics.get("step", config.training.steps))
        return artifacts.publish(source, config.output, manifest_for(config, base, dataset, steps, run_id))


def manifest_for(
    config: RunConfig, base: BaseModelRef, dataset: PreparedDataset, steps: int, run_id: str | None = None
) -> artifacts.ArtifactManifest:
    """What the artifact of this run is and where it came from."""
    method = config.method_type
    return artifacts.ArtifactManifest(
        method=config.method,
        artifact_kind=method.artifact_kind,
        base_model=base,
        trigger_token=method.trigger_token(config),
        instance_prompt=config.data.instance_prompt,
        resolution=config.data.resolution,
        dataset_hash=dataset.dataset_hash,
        config=config,
        run_name=config.effective_run_name,
        mlflow_run_id=run_id,
        steps=steps,
    )
