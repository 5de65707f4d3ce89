"""The ``ray`` launcher: a training job on an existing Ray cluster, through the Ray Jobs API at
``RAY_ADDRESS`` (the dashboard's http address). The data travels with the job (its working
directory is uploaded through the cluster's object store); the artifact comes back through MLflow.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

from dreamloom.config import RunConfig
from dreamloom.errors import DreamloomError, ServiceUnreachable
from dreamloom.settings import tracking_uri, without_credentials
from dreamloom.tracking import Tag, plain
from dreamloom.training.job import CONFIG_ENV, ENTRYPOINT, RESUME_ENV, TrainResult
from dreamloom.training.remote import (
    LogFollower,
    check_before_submitting,
    failure_summary,
    remote_config,
    result_from_logs,
    stage_data,
)

# The Ray Jobs API ships the working directory through the cluster's object store.
MAX_UPLOAD_BYTES = 256 * 2**20
AGENT_WAIT_S = 120.0


def ray_address() -> str:
    address = os.environ.get("RAY_ADDRESS", "")
    if not address:
        raise DreamloomError(
            "the ray launcher needs RAY_ADDRESS: the http address of the cluster's dashboard, e.g. http://ray-head:8265"
        )
    if not address.startswith(("http://", "https://")):
        raise DreamloomError(
            f"RAY_ADDRESS is {address!r}; the ray launcher talks to the Ray Jobs API, so give the "
            "dashboard's http address (e.g. http://ray-head:8265), not the GCS address"
        )
    return address


def job_environment(job_config: RunConfig, resume: bool) -> dict[str, str]:
    """The job's environment. The cluster's own Secrets hold MLflow's credentials; this, which the
    Ray dashboard shows to anyone who can reach it, holds none."""
    return {
        CONFIG_ENV: job_config.model_dump_json(),
        RESUME_ENV: "yes" if resume else "no",
        "MLFLOW_TRACKING_URI": without_credentials(tracking_uri()),
    }


def train_on_ray(
    config: RunConfig,
    resume: bool = False,
    address: str | None = None,
    poll_s: float = 2.0,
    timeout_s: float | None = None,
) -> TrainResult:
    """Submit the run to the Ray cluster at ``address`` (default ``RAY_ADDRESS``), wait, collect."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    address = address or ray_address()
    check_before_submitting(config)
    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError) as exc:
        raise ServiceUnreachable(
            "the Ray Jobs API",
            address,
            str(exc).splitlines()[0],
            "check --ray-address (http://HEAD:8265) and that the head pod runs",
        ) from None
    with tempfile.TemporaryDirectory(prefix="dreamloom-job-") as folder:
        staged = stage_data(config, Path(folder))
        _check_upload_size(Path(folder))
        job_id = f"dreamloom-{config.effective_run_name}-{uuid.uuid4().hex[:8]}"
        # Data paths relative to the job's working directory (the uploaded folder); the output
        # relative too, which the entrypoint puts under the cluster's work folder.
        job_config = remote_config(config, {field: path.relative_to(folder) for field, path in staged.items()}, job_id)
        env = job_environment(job_config, resume)
        submit_when_ready(
            client,
            entrypoint=ENTRYPOINT,
            submission_id=job_id,
            runtime_env={"working_dir": folder, "env_vars": env},
            metadata=plain({Tag.RUN_NAME: config.effective_run_name, Tag.METHOD: config.method}),
        )
    print(f"[dreamloom] submitted Ray job {job_id} to {address}", flush=True)
    status = _wait_for_ray_job(client, job_id, poll_s, timeout_s)
    logs = client.get_job_logs(job_id)
    if status != JobStatus.SUCCEEDED:
        info = client.get_job_info(job_id)
        raise DreamloomError(
            f"Ray job {job_id} {status.value.lower()}: {failure_summary(logs)}"
            + (f"\n(Ray: {info.message})" if info.message else "")
        )
    return result_from_logs(config, logs)


def submit_when_ready(client, wait_s: float = AGENT_WAIT_S, **job) -> str:
    """Submit a job, waiting while a freshly started head has no job agent yet (Ray answers 500
    "No available agent" for a while after the dashboard is up)."""
    deadline, told = time.monotonic() + wait_s, False
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as exc:
            if "No available agent" not in str(exc):
                raise DreamloomError(f"the Ray cluster refused the job: {exc}") from None
            if time.monotonic() > deadline:
                message = f"the Ray cluster has had no job agent for {wait_s:g} s; is its head healthy?"
                raise DreamloomError(message) from None
            if not told:
                print("[dreamloom] waiting for the Ray cluster's job agent", flush=True)
                told = True
            time.sleep(1.0)


def _wait_for_ray_job(client, job_id: str, poll_s: float, timeout_s: float | None):
    follower, started = LogFollower(), time.monotonic()
    status = None
    try:
        while True:
            current = client.get_job_status(job_id)
            if current != status:
                print(f"[dreamloom] Ray job {job_id}: {current.value}", flush=True)
                status = current
            follower.show(client.get_job_logs(job_id))
            if status.is_terminal():
                return status
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                client.stop_job(job_id)
                raise DreamloomError(f"Ray job {job_id} did not finish within {timeout_s:g} s; it was stopped")
            time.sleep(poll_s)
    except KeyboardInterrupt:
        client.stop_job(job_id)
        print(f"\n[dreamloom] stopped Ray job {job_id}", flush=True)
        raise


def _check_upload_size(folder: Path) -> None:
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    if size > MAX_UPLOAD_BYTES:
        raise DreamloomError(
            f"the training images come to {size / 2**20:.0f} MiB, more than the {MAX_UPLOAD_BYTES // 2**20} MiB "
            "the ray launcher uploads through the Jobs API; put them on storage the cluster mounts and use "
            "the kuberay launcher, or resize them first (dreamloom prepare)"
        )
