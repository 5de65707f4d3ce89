"""Running a training job: checks first, then MLflow, then Ray Train, then the artifact.

Everything that can be wrong with the request (config, output folder, run state, devices, base
model, images) is checked before Ray starts or any model is loaded. Ray is the local one
(started here with quiet, contained defaults) unless ``RAY_ADDRESS`` names a cluster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dreamloom import artifacts
from dreamloom.config import RunConfig, dump_run_config
from dreamloom.data.prepare import PreparedDataset, PrepareOptions, prepare_dataset, prepare_training_data
from dreamloom.errors import DreamloomError
from dreamloom.models.base import BaseModelRef, resolve_base_model
from dreamloom.settings import apply_quiet_defaults, ray_temp_dir, tracking_uri, work_dir
from dreamloom.training.prior import class_images_folder
from dreamloom.training.trainer import TrainJob
from dreamloom.training.worker import ARTIFACT_FOLDER


@dataclass
class TrainResult:
    artifact: Path
    run_name: str
    mlflow_run_id: str
    steps: int
    resumed_from_step: int
    metrics: dict


def run_storage(config: RunConfig) -> str:
    return config.scaling.storage_path or str(work_dir() / "runs")


LAUNCHERS = ("local", "ray", "kuberay")


def launch(
    config: RunConfig, launcher: str = "local", resume: bool = False, ray_address: str | None = None
) -> TrainResult:
    """Train where ``launcher`` says: ``local`` (Ray on this machine, or the cluster at RAY_ADDRESS
    joined as a driver), ``ray`` (a job on the cluster behind the Ray Jobs API at ``ray_address``,
    default RAY_ADDRESS) or ``kuberay`` (a RayJob in this Kubernetes namespace)."""
    if launcher == "local":
        return train(config, resume)
    if launcher == "ray":
        from dreamloom.training.remote import train_on_ray

        return train_on_ray(config, resume, address=ray_address)
    if launcher == "kuberay":
        from dreamloom.k8s.kuberay import train_on_kuberay

        return train_on_kuberay(config, resume)
    raise DreamloomError(f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}")


def train(config: RunConfig, resume: bool = False) -> TrainResult:
    apply_quiet_defaults()
    run_name = config.effective_run_name
    storage = run_storage(config)
    check_output(config.output)
    _check_run_state(Path(storage) / run_name, run_name, resume)
    _check_devices(config)
    job = plan_job(config)
    base, dataset = job.base_model, PreparedDataset.load(Path(job.dataset_root))
    mlflow = _tracking_client()
    run_id = _open_tracking_run(mlflow, config, base, dataset, resume)
    job.mlflow_run_id = run_id
    print(
        f"[dreamloom] run {run_name}: {config.method} on {base.spec}, {len(dataset.items)} images, MLflow run {run_id}",
        flush=True,
    )
    try:
        result = _fit(job, storage, run_name)
        manifest = _publish(config, base, dataset, result, run_id)
    except BaseException:
        mlflow.set_terminated(run_id, status="FAILED")
        raise
    mlflow.log_artifacts(run_id, str(config.output), "artifact")
    _log_final_metrics(mlflow, run_id, result.metrics, manifest.steps)
    mlflow.set_terminated(run_id, status="FINISHED")
    return TrainResult(
        config.output,
        run_name,
        run_id,
        int(result.metrics.get("step", config.training.steps)),
        int(result.metrics.get("resumed_from_step", 0)),
        dict(result.metrics),
    )


def train_in_process(config: RunConfig, progress: bool = False) -> Path:
    """Train in this process, without Ray or MLflow, and publish the artifact as a run would.

    For benchmarks and tests that measure a method rather than the platform around it.
    """
    import tempfile

    from dreamloom.artifacts import publish
    from dreamloom.training.trainer import Trainer

    check_output(config.output)
    job = plan_job(config)
    trainer = Trainer(job)
    for step in range(1, config.training.steps + 1):
        loss = trainer.train_step(step)
        if progress and (step % 50 == 0 or step == config.training.steps):
            print(f"[dreamloom] {config.method} step {step}/{config.training.steps} loss {loss:.4f}", flush=True)
    with tempfile.TemporaryDirectory() as staging:
        trainer.save_artifact(Path(staging))
        dataset = PreparedDataset.load(Path(job.dataset_root))
        publish(Path(staging), config.output, manifest_for(config, job.base_model, dataset, config.training.steps))
    return config.output


def plan_job(config: RunConfig) -> TrainJob:
    """Validate and prepare the data, find the base model: everything a worker needs, no compute."""
    dataset = prepare_training_data(config.data, config.method_type.condition(config))
    class_dataset = prepare_class_data(config)
    base = resolve_base_model(config.base_model, config.revision)
    config.method_type.check(config, base, dataset)
    return TrainJob(
        config=config,
        base_model=base,
        dataset_root=str(dataset.root),
        class_images=_class_folder(config, base, class_dataset),
        class_dataset_root=str(class_dataset.root) if class_dataset else None,
        tracking_uri=tracking_uri(),
    )


# ----- checks before any compute -----


def check_output(output: Path) -> None:
    if not output.exists():
        return
    if (output / artifacts.MANIFEST_FILE).is_file():
        raise DreamloomError(f"{output} already holds a finished artifact; choose another --output")
    if not output.is_dir() or any(output.iterdir()):
        raise DreamloomError(f"output {output} exists and is not an empty folder; choose another --output")


def _check_run_state(run_folder: Path, run_name: str, resume: bool) -> None:
    has_state = run_folder.is_dir() and any(run_folder.iterdir())
    if has_state and not resume:
        raise DreamloomError(
            f"run {run_name!r} already has training state at {run_folder}; pass --resume to continue "
            "it, or choose another --run-name or --output"
        )
    if resume and not has_state:
        raise DreamloomError(f"nothing to resume: run {run_name!r} has no state at {run_folder}")


def _check_devices(config: RunConfig) -> None:
    scaling, precision = config.scaling, config.training.mixed_precision
    if os.environ.get("RAY_ADDRESS") and tracking_uri().startswith(("sqlite:", "file:")):
        print(
            f"[dreamloom] warning: RAY_ADDRESS is set but MLflow tracks to {tracking_uri()}; workers on "
            "other machines cannot write there. Set MLFLOW_TRACKING_URI to an MLflow server.",
            flush=True,
        )
    if scaling.gpus_per_worker == 0 and precision == "fp16":
        raise DreamloomError("training.mixed_precision fp16 needs GPUs; set scaling.gpus_per_worker or use bf16/no")
    if scaling.gpus_per_worker and not os.environ.get("RAY_ADDRESS"):
        import torch

        available = torch.cuda.device_count()
        wanted = scaling.gpus_per_worker * scaling.workers
        if wanted > available:
            raise DreamloomError(
                f"the run asks for {wanted:g} GPUs ({scaling.workers} workers x {scaling.gpus_per_worker:g}) "
                f"but this machine has {available}; lower --workers/--gpus-per-worker or set RAY_ADDRESS"
            )


def prepare_class_data(config: RunConfig) -> PreparedDataset | None:
    if not (config.prior_enabled and config.prior.class_data):
        return None
    options = PrepareOptions(config.data.resolution, max_image_pixels=config.data.max_image_pixels)
    folder = work_dir() / "datasets" / f"class-{config.effective_run_name}-{options.key()}"
    return prepare_dataset(config.prior.class_data, folder, options)


def _class_folder(config: RunConfig, base: BaseModelRef, class_dataset) -> str | None:
    if not config.prior_enabled or class_dataset is not None:
        return None
    return str(class_images_folder(base, config.prior, config.data.resolution))


# ----- tracking -----


def _tracking_client():
    from dreamloom.tracking import client

    return client(tracking_uri())


def _open_tracking_run(mlflow, config: RunConfig, base: BaseModelRef, dataset: PreparedDataset, resume: bool) -> str:
    from dreamloom.tracking import flatten, open_run

    tags = {
        "dreamloom.method": config.method,
        "dreamloom.base_model": base.spec,
        "dreamloom.base_model_location": base.location,
        "dreamloom.base_model_revision": str(base.revision),
        "dreamloom.dataset_hash": dataset.dataset_hash,
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
    return run_id


def _log_final_metrics(mlflow, run_id: str, metrics: dict, step: int) -> None:
    from mlflow.entities import Metric

    keys = ("median_step_seconds", "peak_memory_bytes")
    values = [Metric(f"final_{k}", float(metrics[k]), 0, step) for k in keys if k in metrics]
    if values:
        mlflow.log_batch(run_id, metrics=values)


# ----- Ray -----


def ensure_ray(config: RunConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return
    needed_cpus = config.scaling.workers * config.scaling.cpus_per_worker
    ray.init(
        num_cpus=max(os.cpu_count() or 1, needed_cpus),
        # The dashboard hosts the state API that Ray Train's placement-group cleaner polls.
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        _temp_dir=str(ray_temp_dir()),
        logging_level="WARNING",
        log_to_driver=True,
    )


def _fit(job: TrainJob, storage: str, run_name: str):
    import ray.train
    from ray.train.torch import TorchTrainer

    scaling = job.config.scaling
    ensure_ray(job.config)
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.gpus_per_worker:
        resources["GPU"] = scaling.gpus_per_worker
    trainer = TorchTrainer(
        _worker_entry,
        train_loop_config={"job": job.model_dump(mode="json")},
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.workers, use_gpu=scaling.gpus_per_worker > 0, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job.config.training.keep_checkpoints),
            # Our own progress lines say what happens; Ray Train's per-report INFO lines repeat it.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise DreamloomError(f"training run {run_name!r} failed: {exc}") from exc


def _worker_entry(job_document: dict) -> None:
    from dreamloom.training.worker import train_worker

    train_worker(job_document)


# ----- the artifact -----


def _publish(config: RunConfig, base: BaseModelRef, dataset: PreparedDataset, result, run_id: str):
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
