"""The entrypoint of a RayJob (``python -m dreamloom.training.entrypoint``): the run config comes in
the ``DREAMLOOM_RUN_CONFIG`` environment variable; the job's Ray cluster does the training.

KubeRay retries a failed job on a fresh cluster (``backoffLimit``); the run's checkpoints live
on the shared volume, so a retry continues from the last one instead of starting over.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from dreamloom.config import RunConfig
from dreamloom.errors import DreamloomError
from dreamloom.k8s.rayjob import CONFIG_ENV


def main() -> int:
    from pydantic import ValidationError

    from dreamloom.training.launcher import run_storage, train

    document = os.environ.get(CONFIG_ENV)
    if not document:
        print(f"dreamloom: error: {CONFIG_ENV} is not set; this entrypoint runs inside a dreamloom RayJob",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        config = RunConfig.model_validate_json(document)
        run_folder = Path(run_storage(config)) / config.effective_run_name
        result = train(config, resume=run_folder.is_dir() and any(run_folder.iterdir()))
    except (DreamloomError, ValidationError) as exc:
        print(f"dreamloom: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"artifact": str(result.artifact), "mlflow_run_id": result.mlflow_run_id, "steps": result.steps}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
