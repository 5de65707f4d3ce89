"""The entrypoint of a training job on a Ray cluster (``python -m dreamloom.training.entrypoint``),
submitted by the ``ray`` launcher through the Ray Jobs API or by the ``kuberay`` launcher as a RayJob.

The run config comes in ``DREAMLOOM_RUN_CONFIG``; ``DREAMLOOM_RESUME`` says what to do with training
state already in the run's storage: ``yes`` continues it, ``no`` refuses to touch it, ``auto``
continues it if there is any. RayJobs use ``auto``: KubeRay retries a failed job on a fresh cluster
and the checkpoints live on the shared volume, so a retry picks up from the last one.

A relative ``output`` is placed under the cluster's work folder (``DREAMLOOM_HOME``).
The last line of a successful job is ``dreamloom-result: {json}``: the launcher reads it from the
job's logs to find the MLflow run that holds the artifact.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from dreamloom.config import RunConfig
from dreamloom.errors import EXIT_INPUT, EXIT_USAGE, DreamloomError
from dreamloom.settings import work_dir
from dreamloom.training.job import CONFIG_ENV, ERROR_MARKER, RESULT_MARKER, RESUME_ENV, run_storage


def main() -> int:
    from pydantic import ValidationError

    from dreamloom.training.local import train

    document = os.environ.get(CONFIG_ENV)
    if not document:
        print(f"{ERROR_MARKER}{CONFIG_ENV} is not set; this entrypoint runs as a job on a Ray cluster", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = _in_work_folder(RunConfig.model_validate_json(document))
        run_folder = Path(run_storage(config)) / config.effective_run_name
        result = train(config, resume=_resume(os.environ.get(RESUME_ENV, "no"), run_folder))
    except (DreamloomError, ValidationError) as exc:
        print(f"{ERROR_MARKER}{exc}", file=sys.stderr, flush=True)
        return exc.exit_code if isinstance(exc, DreamloomError) else EXIT_INPUT
    outcome = {
        "mlflow_run_id": result.mlflow_run_id,
        "steps": result.steps,
        "resumed_from_step": result.resumed_from_step,
    }
    print(RESULT_MARKER + json.dumps(outcome), flush=True)
    return 0


def _in_work_folder(config: RunConfig) -> RunConfig:
    """A relative output goes under the cluster's work folder, not the job's working directory
    (which Ray shares between jobs that upload the same files); checkpoints stay on the cluster's
    storage, by run name (the job's output is a copy the submitter downloads)."""
    update = {}
    if not config.output.is_absolute():
        update["output"] = work_dir() / "artifacts" / config.output
    if not config.scaling.storage_path:
        update["scaling"] = config.scaling.model_copy(update={"storage_path": str(work_dir() / "runs")})
    return config.model_copy(update=update) if update else config


def _resume(policy: str, run_folder: Path) -> bool:
    if policy not in ("yes", "no", "auto"):
        raise DreamloomError(f"{RESUME_ENV} must be yes, no or auto, not {policy!r}")
    if policy == "auto":
        return run_folder.is_dir() and any(run_folder.iterdir())
    return policy == "yes"


if __name__ == "__main__":
    sys.exit(main())
