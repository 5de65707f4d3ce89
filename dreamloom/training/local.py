"""The local driver: train on the Ray on this machine (started here with quiet, contained
defaults), or on the cluster at ``RAY_ADDRESS`` joined as a driver.

Checks first (``preflight``), then the MLflow run, then Ray Train, then the artifact
(``bookkeeping``). ``train_in_process`` runs the same loop without Ray or MLflow, for benchmarks
and tests that measure a method rather than the platform around it.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from dreamloom.artifacts import publish
from dreamloom.config import RunConfig
from dreamloom.data.prepare import PreparedDataset
from dreamloom.errors import DreamloomError
from dreamloom.progress import PhaseClock
from dreamloom.settings import apply_quiet_defaults, free_port, local_ray_cpus, ray_temp_dir
from dreamloom.training.bookkeeping import (
    log_final_metrics,
    manifest_for,
    open_tracking_run,
    publish_from_checkpoint,
    run_phases,
    tracking_client,
)
from dreamloom.training.job import TrainJob, TrainResult, check_output, run_storage
from dreamloom.training.preflight import (
    check_devices,
    check_resume,
    check_run_state,
    plan_job,
    record_run,
    run_record,
)


def train(config: RunConfig, resume: bool = False) -> TrainResult:
    apply_quiet_defaults()
    clock = PhaseClock()
    run_name = config.effective_run_name
    storage = run_storage(config)
    with clock.phase("checks_and_data"):
        job, dataset = _checked_job(config, storage, resume)
    base = job.base_model
    with clock.phase("tracking"):
        mlflow = tracking_client()
        run_id = open_tracking_run(mlflow, config, base, dataset, resume)
    job.mlflow_run_id = run_id
    print(
        f"[dreamloom] run {run_name}: {config.method} on {base.spec}, {len(dataset.items)} images, MLflow run {run_id}",
        flush=True,
    )
    try:
        with clock.phase("ray_start"):
            ensure_ray(config)
        with clock.phase("ray_train"):
            result = _fit(job, storage, run_name)
        with clock.phase("publishing"):
            manifest = publish_from_checkpoint(config, base, dataset, result, run_id)
    except BaseException:
        mlflow.set_terminated(run_id, status="FAILED")
        raise
    with clock.phase("publishing"):
        mlflow.log_artifacts(run_id, str(config.output), "artifact")
    phases = run_phases(clock, result.metrics)
    log_final_metrics(mlflow, run_id, result.metrics, phases, manifest.steps)
    mlflow.set_terminated(run_id, status="FINISHED")
    print(f"[dreamloom] run {run_name} took {phases.summary()}", flush=True)
    return TrainResult(
        config.output,
        run_name,
        run_id,
        int(result.metrics.get("step", config.training.steps)),
        int(result.metrics.get("resumed_from_step", 0)),
        dict(result.metrics),
    )


def _checked_job(config: RunConfig, storage: str, resume: bool) -> tuple[TrainJob, PreparedDataset]:
    """Everything checked and the data prepared before any compute or bookkeeping starts."""
    run_name = config.effective_run_name
    check_output(config.output)
    check_run_state(Path(storage) / run_name, run_name, resume)
    check_devices(config)
    job = plan_job(config)
    record = run_record(config, job)
    if resume:
        check_resume(Path(storage) / run_name, record)
    else:
        record_run(Path(storage) / run_name, record)
    return job, job.dataset()


def train_in_process(config: RunConfig, progress: bool = False) -> Path:
    """Train in this process, without Ray or MLflow, and publish the artifact as a run would."""
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
        dataset = job.dataset()
        publish(Path(staging), config.output, manifest_for(config, job.base_model, dataset, config.training.steps))
    return config.output


_ray_started_here = False


def ensure_ray(config: RunConfig) -> None:
    """Join the cluster at ``RAY_ADDRESS``, or make sure the Ray on this machine offers the cores the
    run's workers need: Ray Train waits forever for a placement group a fixed local Ray can never
    offer, so a Ray started here for a smaller run is restarted, and one started by the caller is
    refused with what to change."""
    import ray

    global _ray_started_here
    if os.environ.get("RAY_ADDRESS"):
        if not ray.is_initialized():
            ray.init(log_to_driver=True)
        return
    needed_cpus = config.scaling.workers * (config.scaling.cpus_per_worker or 1)
    if ray.is_initialized():
        offered = ray.cluster_resources().get("CPU", 0)
        if offered >= needed_cpus:
            return
        if not _ray_started_here:
            raise DreamloomError(
                f"the Ray this process already joined offers {offered:g} CPUs but the run needs {needed_cpus} "
                f"({config.scaling.workers} workers x {config.scaling.cpus_per_worker or 1}); lower scaling.workers "
                f"or scaling.cpus_per_worker, or call ray.init(num_cpus={needed_cpus}) instead"
            )
        ray.shutdown()
    dashboard_port = free_port()
    _start_where_it_lasts(
        lambda: ray.init(
            # Always a Ray of its own: without an address Ray joins the newest one on this machine,
            # so a second run joined the first's (and warned of "multiple active Ray instances").
            address="local",
            num_cpus=max(local_ray_cpus(), needed_cpus),
            # The dashboard hosts the state API that Ray Train's placement-group cleaner polls.
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            _temp_dir=str(ray_temp_dir()),
            logging_level="WARNING",
            log_to_driver=True,
            dashboard_port=dashboard_port,
            runtime_env={"env_vars": _local_ray_env(dashboard_port)},
        )
    )
    _ray_started_here = True


def _local_ray_env(dashboard_port: int) -> dict[str, str]:
    """What Ray Train's own actors need on a Ray of this machine: node draining (spot preemption)
    means nothing there and its watcher's polls fail, logging a traceback into every run; and the
    placement-group cleaner asks the state API, which without an address looks for the Ray on this
    machine and fails with "multiple active Ray instances" when another run has one."""
    return {
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}",
    }


def _start_where_it_lasts(start: Callable[[], object]) -> None:
    """Ray binds its head processes to the thread that starts them (Linux's parent-death signal
    follows the thread): started from a thread that ends (a web handler, a test's runner), they are
    killed with it, and a minute later Ray ends the whole process. Off the main thread, Ray starts on a
    thread that lives as long as the process."""
    if threading.current_thread() is threading.main_thread():
        start()
        return
    started, failure = threading.Event(), []

    def keep() -> None:
        try:
            start()
        except BaseException as exc:
            failure.append(exc)
        started.set()
        threading.Event().wait()

    threading.Thread(target=keep, name="dreamloom-ray-keeper", daemon=True).start()
    started.wait()
    if failure:
        raise failure[0]


def cpus_per_worker(config: RunConfig, ray_cpus: float) -> int:
    """The configured cores per worker; by default, on a Ray started here, its cores shared among
    the workers (Ray would give each worker one core and one torch thread, leaving the rest idle),
    and 1 on a cluster, where the pod's size decides."""
    if config.scaling.cpus_per_worker:
        return config.scaling.cpus_per_worker
    if os.environ.get("RAY_ADDRESS"):
        return 1
    return max(1, int(ray_cpus) // config.scaling.workers)


def _fit(job: TrainJob, storage: str, run_name: str):
    import ray.train
    from ray.train.torch import TorchTrainer

    scaling = job.config.scaling
    cpus = cpus_per_worker(job.config, ray.cluster_resources().get("CPU", 1))
    resources = {"CPU": cpus}
    if scaling.gpus_per_worker:
        resources["GPU"] = scaling.gpus_per_worker
    trainer = TorchTrainer(
        _worker_entry,
        train_loop_config={"job": job.model_dump(mode="json"), "cpus": cpus},
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
