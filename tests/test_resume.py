"""Failures mid-run: a killed worker is restarted by Ray; a killed driver is resumed with --resume."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from dreamloom.artifacts import read_manifest
from dreamloom.errors import EXIT_INPUT
from dreamloom.tracking import client
from dreamloom.training.local import train
from tests.helpers import draw_images, run_config

pytestmark = pytest.mark.slow

CHECKPOINT_EVERY = 5
STEPS = 60


def _wait_for_committed_checkpoint(
    run_folder: Path, at_least: int = 2 * CHECKPOINT_EVERY, timeout: float = 240.0
) -> int:
    """The step of the newest checkpoint Ray has committed, once it reaches ``at_least``.

    A checkpoint folder appears as soon as rank 0 uploads it, but Ray resumes only from
    checkpoints its controller has registered; those are listed in the run's snapshot file.
    """
    snapshot = run_folder / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]
        except (OSError, ValueError, KeyError):
            latest = None
        if latest and int(latest["checkpoint_dir_name"].split("_")[1]) >= at_least:
            return int(latest["checkpoint_dir_name"].split("_")[1])
        time.sleep(0.05)
    raise AssertionError(f"no committed checkpoint at step >= {at_least} in {run_folder}")


def _train_workers() -> list[psutil.Process]:
    """This run's live training workers, asked of its own Ray cluster: a process scan would also
    count the workers of another test's cluster running beside it (pytest-xdist)."""
    import ray
    from ray.util.state import list_actors

    filters = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    alive = list_actors(address=ray.get_runtime_context().gcs_address, filters=filters)
    return [psutil.Process(actor.pid) for actor in sorted(alive, key=lambda actor: actor.pid)]


def test_a_killed_worker_is_restarted_and_resumes_from_the_last_checkpoint(tmp_path):
    photos = draw_images(tmp_path / "photos", count=4)
    config = run_config(
        photos,
        tmp_path / "survivor",
        training__steps=STEPS,
        training__checkpoint_every=CHECKPOINT_EVERY,
        scaling__workers=2,
        scaling__max_failures=1,
    )
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(result=train(config)))
    runner.start()
    committed = _wait_for_committed_checkpoint(tmp_path / ".survivor.checkpoints" / "survivor")  # beside the output
    workers = _train_workers()
    assert len(workers) == 2
    workers[-1].send_signal(signal.SIGKILL)
    runner.join(timeout=600)

    result = outcome["result"]
    assert result.steps == STEPS
    # The restarted group began from the last committed checkpoint (or a later one).
    assert committed <= result.resumed_from_step < STEPS
    assert result.resumed_from_step % CHECKPOINT_EVERY == 0
    mlflow = client()
    resumed = mlflow.get_metric_history(result.mlflow_run_id, "resumed_from_step")
    assert [m.value for m in resumed] == [result.resumed_from_step]
    losses = mlflow.get_metric_history(result.mlflow_run_id, "loss")
    assert {m.step for m in losses} == set(range(1, STEPS + 1))
    assert read_manifest(result.artifact).steps == STEPS


def _cli(args: list[str], env: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dreamloom.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def test_a_killed_driver_is_resumed_by_rerunning_with_resume(tmp_path):
    photos = draw_images(tmp_path / "photos", count=4)
    # Its own Ray and MLflow: mlflow.set_tracking_uri() in earlier tests exports MLFLOW_TRACKING_URI.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {
        "DREAMLOOM_HOME": str(tmp_path / "home")
    }
    args = ["train", "--method", "lora", "--base-model", "tiny", "--data", str(photos), "--instance-prompt",
            "a photo of sks ball", "--resolution", "64", "--steps", str(STEPS), "--batch-size", "2", "--workers", "2",
            "--output", str(tmp_path / "interrupted"), "--set", f"training.checkpoint_every={CHECKPOINT_EVERY}",
            "--set", "validation.steps=2"]  # fmt: skip
    driver = _cli(args, env, start_new_session=True)
    committed = _wait_for_committed_checkpoint(tmp_path / ".interrupted.checkpoints" / "interrupted")
    family = [*psutil.Process(driver.pid).children(recursive=True), psutil.Process(driver.pid)]
    for process in family:
        process.kill()
    psutil.wait_procs(family, timeout=30)
    assert not (tmp_path / "interrupted" / "dreamloom.json").exists()

    refused = _cli(args, env)
    output, _ = refused.communicate(timeout=120)
    assert refused.returncode == EXIT_INPUT
    assert "--resume" in output

    # Other settings, or other images, would make the manifest describe a run that never happened.
    other = draw_images(tmp_path / "other-photos", count=4, seed=9)
    changed = ["--set", "optimizer.learning_rate=0.001", "--set", "lora.rank=8", "--data", str(other)]
    mismatched = _cli([*args, *changed, "--resume"], env)
    output, _ = mismatched.communicate(timeout=120)
    assert mismatched.returncode == EXIT_INPUT, output
    assert "cannot resume with other settings" in output
    for line in ("optimizer.learning_rate: 0.0001 -> 0.001", "lora.rank: 4 -> 8", "data.content_hash: sha256:"):
        assert line in output
    assert "Traceback" not in output and "[dreamloom] run interrupted:" not in output  # refused before the run began

    resumed = _cli([*args, "--resume"], env)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    resumed_from = int(output.split("resumed from step ")[1].split(";")[0])
    assert committed <= resumed_from < STEPS
    manifest = read_manifest(tmp_path / "interrupted")
    assert manifest.steps == STEPS
    tracking = client(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    runs = tracking.search_runs([tracking.get_experiment_by_name("dreamloom").experiment_id])
    assert [(r.info.run_id, r.info.status) for r in runs] == [(manifest.mlflow_run_id, "FINISHED")]  # reopened, not new
