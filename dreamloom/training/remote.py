"""The steps both remote launchers (``ray_jobs``, ``kuberay``) follow around a job on a cluster:

1. check everything that can be checked here (output folder, config, every training image);
2. stage the data where the job can read it and rewrite the config's paths to match;
3. (the launcher submits, then waits, printing the job's log as it grows: ``LogFollower``);
4. read the result line of the job's log, and collect the artifact from the MLflow run it names
   (MLflow is the store both sides share), verified against its manifest before it appears.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from dreamloom import artifacts
from dreamloom.config import RunConfig
from dreamloom.data.prepare import copy_data_folder
from dreamloom.errors import DreamloomError
from dreamloom.files import staged_folder
from dreamloom.settings import tracking_uri
from dreamloom.training.job import (
    ERROR_MARKER,
    RESULT_MARKER,
    TrainResult,
    check_output,
    prepare_class_data,
    training_data,
)

INSTANCE_FOLDER, CLASS_FOLDER = "instance", "class"


def check_before_submitting(config: RunConfig) -> None:
    """What a remote job would only find out after scheduling a cluster: found here, in seconds."""
    check_output(config.output)
    training_data(config)
    prepare_class_data(config)


def stage_data(config: RunConfig, folder: Path) -> dict[str, Path]:
    """Copy the instance (and own class) images into ``folder``; returns {config field: copy}."""
    staged = {"data.path": folder / INSTANCE_FOLDER}
    copy_data_folder(config.data.path, staged["data.path"])
    if config.prior_enabled and config.prior.class_data:
        staged["prior.class_data"] = folder / CLASS_FOLDER
        copy_data_folder(config.prior.class_data, staged["prior.class_data"])
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
    with tempfile.TemporaryDirectory(prefix=f".{output.name}-download-", dir=output.parent) as download:
        downloaded = Path(
            mlflow.artifacts.download_artifacts(
                run_id=mlflow_run_id, artifact_path="artifact", dst_path=download, tracking_uri=tracking_uri()
            )
        )
        manifest = artifacts.read_manifest(downloaded, verify=True)
        with staged_folder(output) as staging:  # the output was checked empty before submitting
            shutil.copytree(downloaded, staging, dirs_exist_ok=True)
    return manifest


def result_from_logs(config: RunConfig, logs: str) -> TrainResult:
    outcome = job_outcome(logs)
    collect_artifact(outcome["mlflow_run_id"], config.output)
    print(
        f"[dreamloom] collected the artifact of MLflow run {outcome['mlflow_run_id']} into {config.output}", flush=True
    )
    return TrainResult(
        config.output,
        config.effective_run_name,
        outcome["mlflow_run_id"],
        int(outcome["steps"]),
        int(outcome.get("resumed_from_step", 0)),
    )


class LogFollower:
    """Prints what is new in a log that is re-read whole on every poll."""

    def __init__(self, prefix: str = "  | "):
        self.prefix, self.seen = prefix, 0

    def show(self, logs: str) -> None:
        fresh = logs[self.seen :]
        self.seen = len(logs)
        for line in fresh.splitlines():
            print(self.prefix + line, flush=True)
