"""The ``kuberay`` launcher: train a run as a RayJob in the namespace this process runs in.

The data is staged on the shared volume (the release's ``<fullname>-data`` claim, mounted by the pipeline's
train step and by every Ray pod), the RayJob is rendered (``dreamloom.k8s.rayjob``) and checked
against KubeRay's CRD, created, and watched until KubeRay says it is complete; the submitter's log
is printed as it grows. The artifact is collected from the MLflow run the job reports, like the
``ray`` launcher does.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from dreamloom.config import RunConfig
from dreamloom.errors import DreamloomError
from dreamloom.k8s.cluster import Cluster, KubernetesCluster
from dreamloom.k8s.rayjob import RayJobSettings, RayJobSpec, dns_name, render_rayjob, settings_from_environment
from dreamloom.training.job import CONFIG_ENV, ENTRYPOINT, RESUME_ENV, TrainResult
from dreamloom.training.remote import (
    LogFollower,
    check_before_submitting,
    failure_summary,
    remote_config,
    result_from_logs,
    stage_data,
)

# jobDeploymentStatus values after which KubeRay does nothing more with the job.
FINISHED = ("Complete", "Failed", "ValidationFailed")


def job_name(config: RunConfig) -> str:
    """The RayJob's name: a DNS-1123 label from the run name."""
    name = dns_name(config.effective_run_name)
    if not name:
        raise DreamloomError(f"run name {config.effective_run_name!r} has no letters or digits to name a RayJob with")
    return name


def rayjob_for(config: RunConfig, settings: RayJobSettings | None = None) -> dict:
    """The RayJob that runs the training entrypoint on ``config``, sized from its scaling section.
    ``auto``: a retry of the job (a fresh cluster) continues from the run's last checkpoint."""
    spec = RayJobSpec(
        name=job_name(config),
        entrypoint=ENTRYPOINT,
        env={CONFIG_ENV: config.model_dump_json(), RESUME_ENV: "auto"},
        workers=config.scaling.workers,
        gpus_per_worker=config.scaling.gpus_per_worker,
        labels={"dreamloom.ai/method": config.method},
    )
    return render_rayjob(spec, settings or RayJobSettings())


def train_on_kuberay(
    config: RunConfig,
    resume: bool = False,
    cluster: Cluster | None = None,
    settings: RayJobSettings | None = None,
    poll_s: float = 10.0,
) -> TrainResult:
    """Train ``config`` as a RayJob; retries of the job resume from its checkpoints on their own,
    so ``resume`` only matters for a job started again by hand (state is found and continued)."""
    settings = settings or settings_from_environment()
    check_before_submitting(config)
    name = job_name(config)
    folder = Path(settings.data_mount) / "dreamloom" / "jobs" / name
    if folder.exists() and not resume:
        raise DreamloomError(
            f"{folder} already holds the data of a job named {name}: is it still running? Delete the RayJob "
            "and that folder, pass --resume to start it again from its checkpoints, or choose another run name"
        )
    shutil.rmtree(folder, ignore_errors=True)
    document = _staged_rayjob(config, settings, folder)
    cluster = cluster or KubernetesCluster()
    cluster.create(document)
    namespace = settings.namespace
    print(f"[dreamloom] created RayJob {namespace}/{name} ({config.scaling.workers} workers)", flush=True)
    try:
        status = wait_for_rayjob(cluster, namespace, name, poll_s)
        logs = cluster.logs(namespace, name)
        if status.get("jobStatus") != "SUCCEEDED":
            reason = status.get("reason") or status.get("jobDeploymentStatus")
            detail = status.get("message") or failure_summary(logs)
            raise DreamloomError(f"RayJob {namespace}/{name} failed ({reason}): {detail}")
        return result_from_logs(config, logs)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _staged_rayjob(config: RunConfig, settings: RayJobSettings, folder: Path) -> dict:
    """Stage the images on the shared volume and render the job that reads them there; nothing is
    left on the volume if the job cannot be rendered."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        staged = stage_data(config, folder)
        return rayjob_for(remote_config(config, staged, folder / "artifact"), settings)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def wait_for_rayjob(cluster: Cluster, namespace: str, name: str, poll_s: float = 10.0) -> dict:
    """Poll the RayJob until KubeRay is done with it, printing state changes and new log lines.
    No deadline here: the RayJob carries activeDeadlineSeconds and KubeRay enforces it."""
    follower, shown = LogFollower(), None
    try:
        while True:
            status = cluster.status(namespace, name)
            state = (status.get("jobDeploymentStatus") or "New", status.get("jobStatus") or "-")
            if state != shown:
                print(f"[dreamloom] RayJob {namespace}/{name}: {state[0]} (job {state[1]})", flush=True)
                shown = state
            if state[0] in ("Running", *FINISHED):
                follower.show(cluster.logs(namespace, name))
            if state[0] in FINISHED:
                return status
            time.sleep(poll_s)
    except KeyboardInterrupt:
        cluster.delete(namespace, name)
        print(f"\n[dreamloom] deleted RayJob {namespace}/{name}", flush=True)
        raise
