"""Training on a Ray cluster that runs somewhere else.

Two launchers share this module: ``ray`` submits the training entrypoint to an existing cluster
through the Ray Jobs API (``RAY_ADDRESS``, the dashboard's http address), and ``kuberay``
(dreamloom.k8s.kuberay) creates a RayJob. Both follow the same steps:

1. check everything that can be checked here (output folder, config, every training image);
2. stage the data where the job can read it and rewrite the config's paths to match;
3. submit, then wait, printing the job's log as it grows;
4. read the result line of the job's log, and collect the artifact from the MLflow run it names
   (MLflow is the store both sides share), verified against its manifest before it appears.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from dreamloom import artifacts
from dreamloom.config import RunConfig
from dreamloom.errors import DreamloomError
from dreamloom.settings import tracking_uri
from dreamloom.training.entrypoint import CONFIG_ENV, ERROR_MARKER, RESULT_MARKER, RESUME_ENV
from dreamloom.training.launcher import TrainResult, check_output, prepare_class_data

ENTRYPOINT = "python -m dreamloom.training.entrypoint"
# The Ray Jobs API ships the working directory through the cluster's object store.
MAX_UPLOAD_BYTES = 256 * 2**20
AGENT_WAIT_S = 120.0
INSTANCE_FOLDER, CLASS_FOLDER = "instance", "class"


# ----- before submitting -----


def check_before_submitting(config: RunConfig) -> None:
    """What a remote job would only find out after scheduling a cluster: found here, in seconds."""
    from dreamloom.data.prepare import prepare_training_data

    check_output(config.output)
    prepare_training_data(config.data, config.method_type.condition(config))
    prepare_class_data(config)


def stage_data(config: RunConfig, folder: Path) -> dict[str, Path]:
    """Copy the instance (and own class) images into ``folder``; returns {config field: copy}."""
    staged = {"data.path": folder / INSTANCE_FOLDER}
    shutil.copytree(config.data.path, staged["data.path"])
    if config.prior_enabled and config.prior.class_data:
        staged["prior.class_data"] = folder / CLASS_FOLDER
        shutil.copytree(config.prior.class_data, staged["prior.class_data"])
    return staged


def remote_config(config: RunConfig, paths: dict[str, Path | str], output: Path | str) -> RunConfig:
    """The config the job runs: data where it was staged, the artifact where the job may write,
    and the run name fixed (by default it comes from the output folder, which changes here)."""
    document = config.model_dump(mode="json")
    for field, path in paths.items():
        section, name = field.split(".")
        document[section][name] = str(path)
    document.update(output=str(output), run_name=config.effective_run_name)
    return RunConfig.model_validate(document)


# ----- after the job -----


def job_outcome(logs: str) -> dict:
    """The result line the entrypoint prints last."""
    for line in reversed(logs.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    raise DreamloomError("the training job finished but its log has no result line; see the job's log")


def failure_summary(logs: str, lines: int = 15) -> str:
    """The entrypoint's own error if it printed one, else the end of the log."""
    errors = [line[len(ERROR_MARKER) :] for line in logs.splitlines() if line.startswith(ERROR_MARKER)]
    if errors:
        return errors[-1]
    tail = logs.strip().splitlines()[-lines:]
    return "\n".join(tail) if tail else "(the job left no log)"


def collect_artifact(mlflow_run_id: str, output: Path) -> artifacts.ArtifactManifest:
    """Download the run's artifact from MLflow into ``output``: complete and verified, or nothing."""
    import mlflow.artifacts

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        downloaded = Path(
            mlflow.artifacts.download_artifacts(
                run_id=mlflow_run_id, artifact_path="artifact", dst_path=str(staging), tracking_uri=tracking_uri()
            )
        )
        manifest = artifacts.read_manifest(downloaded, verify=True)
        if output.exists():
            output.rmdir()  # checked empty before submitting
        os.replace(downloaded, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def result_from_logs(config: RunConfig, logs: str) -> TrainResult:
    outcome = job_outcome(logs)
    collect_artifact(outcome["mlflow_run_id"], config.output)
    print(f"[dreamloom] collected the artifact of MLflow run {outcome['mlflow_run_id']} into {config.output}",
          flush=True)  # fmt: skip
    return TrainResult(
        config.output, config.effective_run_name, outcome["mlflow_run_id"], int(outcome["steps"]),
        int(outcome.get("resumed_from_step", 0)), {},
    )  # fmt: skip


class LogFollower:
    """Prints what is new in a log that is re-read whole on every poll."""

    def __init__(self, prefix: str = "  | "):
        self.prefix, self.seen = prefix, 0

    def show(self, logs: str) -> None:
        fresh = logs[self.seen :]
        self.seen = len(logs)
        for line in fresh.splitlines():
            print(self.prefix + line, flush=True)


# ----- the ray launcher -----


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


def train_on_ray(
    config: RunConfig, resume: bool = False, address: str | None = None, poll_s: float = 2.0,
    timeout_s: float | None = None,
) -> TrainResult:  # fmt: skip
    """Submit the run to the Ray cluster at ``address`` (default ``RAY_ADDRESS``), wait, collect."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    address = address or ray_address()
    check_before_submitting(config)
    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError) as exc:
        raise DreamloomError(f"cannot reach the Ray Jobs API at {address}: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="dreamloom-job-") as folder:
        staged = stage_data(config, Path(folder))
        _check_upload_size(Path(folder))
        job_id = f"dreamloom-{config.effective_run_name}-{uuid.uuid4().hex[:8]}"
        # Data paths relative to the job's working directory (the uploaded folder); the output
        # relative too, which the entrypoint puts under the cluster's work folder.
        job_config = remote_config(config, {field: path.relative_to(folder) for field, path in staged.items()}, job_id)
        env = {CONFIG_ENV: job_config.model_dump_json(), RESUME_ENV: "yes" if resume else "no",
               "MLFLOW_TRACKING_URI": tracking_uri()}  # fmt: skip
        submit_when_ready(
            client, entrypoint=ENTRYPOINT, submission_id=job_id, runtime_env={"working_dir": folder, "env_vars": env},
            metadata={"dreamloom.run_name": config.effective_run_name, "dreamloom.method": config.method},
        )  # fmt: skip
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
