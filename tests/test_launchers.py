"""The remote launchers against a real Ray cluster started with ``ray start --head`` on loopback.

``ray`` goes through the Ray Jobs API as it would to any cluster. ``kuberay`` needs an API server,
which cannot run here: ``RayBackedKubeRay`` stands in for the KubeRay operator and runs the rendered
RayJob the way its K8sJobMode submitter does (the job's entrypoint, submitted to the Ray cluster,
with the pod template's environment, secrets resolved, and the job's runtime env).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import ClassVar

import pytest

from dreamloom.artifacts import read_manifest
from dreamloom.errors import DreamloomError
from dreamloom.k8s.rayjob import RayJobSettings
from dreamloom.k8s.schemas import validate_custom_resource
from dreamloom.serving.server import free_port
from dreamloom.settings import tracking_uri
from dreamloom.training.kuberay import job_name, train_on_kuberay
from dreamloom.training.ray_jobs import submit_when_ready, train_on_ray
from tests.helpers import draw_images, run_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A Ray head in its own process group, with its own work folder (the cluster's disk)."""
    root = tmp_path_factory.mktemp("ray-cluster")
    # Ray's socket paths live under --temp-dir and must stay short (the Unix limit is 107 bytes).
    ray_temp = Path(tempfile.mkdtemp(prefix="dl-ray-"))
    dashboard = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")},
        "DREAMLOOM_HOME": str(root / "home"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    command = [Path(sys.executable).with_name("ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
               "--port", str(free_port()), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
               "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
               "--num-cpus", "2", "--temp-dir", str(ray_temp), "--include-dashboard", "true",
               "--disable-usage-stats"]  # fmt: skip
    log = (root / "ray-start.log").open("w")
    head = subprocess.Popen(command, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for(f"{address}/api/version", head)
        _wait_for_job_agent(address)
        yield address, root / "home"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(30)
        log.close()
        shutil.rmtree(ray_temp, ignore_errors=True)


def _wait_for(url: str, process: subprocess.Popen, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode}; see ray-start.log beside the test data")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the Ray dashboard at {url} did not come up in {timeout_s} s")


def _wait_for_job_agent(address: str) -> None:
    """A no-op job must run: the head answers HTTP before its job agent is up (or if it cannot start)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    job = submit_when_ready(client, wait_s=60, entrypoint="python -c pass")
    deadline = time.monotonic() + 60
    while not (status := client.get_job_status(job)).is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job)


@pytest.fixture
def photos(tmp_path):
    return draw_images(tmp_path / "photos", count=3, captions=True)


def _config(photos: Path, output: Path, **overrides):
    return run_config(photos, output, training__steps=4, validation__every=0, data__trigger_token="sks", **overrides)


def _jobs(address: str) -> list:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address).list_jobs()


def test_the_train_step_with_the_ray_launcher_trains_on_the_cluster(ray_cluster, photos, tmp_path, capsys):
    """The pipeline's prepare-data and train components, as KFP chains them, with launcher=ray: the
    prepared set (the Dataset artifact) is what the cluster trains on."""
    from kfp.dsl import Dataset, Model

    from components import prepare_data, train

    address, cluster_home = ray_cluster
    document = _config(photos, tmp_path / "unused").model_dump(mode="json", exclude={"output", "run_name"})
    dataset = Dataset(uri=str(tmp_path / "outputs" / "dataset"))
    prepared = prepare_data.python_func(config=document, dataset=dataset)
    model = Model(uri=str(tmp_path / "outputs" / "model"))
    trained = train.python_func(
        config=document, dataset=dataset, run_name="shoe-lora", model=model, launcher="ray", ray_address=address
    )

    manifest = read_manifest(Path(model.path))  # verifies every file against its digest
    assert trained.steps == manifest.steps == 4 and manifest.mlflow_run_id == trained.mlflow_run_id
    assert manifest.run_name == "shoe-lora" and model.metadata["method"] == "lora"
    assert model.metadata["dataset_hash"] == manifest.dataset_hash == prepared.dataset_hash  # lineage carried
    assert str(manifest.config.data.path) == "instance"  # the job read the images it was sent
    assert (cluster_home / "runs" / "shoe-lora").is_dir()  # checkpoints live on the cluster's storage
    assert len(list((cluster_home / "artifacts").iterdir())) == 1  # and the job's copy of the artifact
    from dreamloom.tracking import client

    assert client(tracking_uri()).get_run(trained.mlflow_run_id).info.status == "FINISHED"
    shown = capsys.readouterr().out
    assert "RUNNING" in shown and "SUCCEEDED" in shown and "4/4 (100%)" in shown  # the job's log, as it ran


def test_a_job_that_fails_on_the_cluster_reports_the_cause_and_leaves_no_artifact(ray_cluster, photos, tmp_path):
    address, _ = ray_cluster
    config = _config(photos, tmp_path / "broken", base_model=str(tmp_path / "no-such-model"))
    with pytest.raises(DreamloomError) as failed:
        train_on_ray(config, address=address, poll_s=0.5)
    assert "failed" in str(failed.value) and "no-such-model" in str(failed.value)
    assert not config.output.exists() and not list(config.output.parent.glob(".broken-*"))


def test_bad_input_is_refused_before_anything_is_submitted(ray_cluster, photos, tmp_path, monkeypatch):
    address, _ = ray_cluster
    before = len(_jobs(address))
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DreamloomError, match=r"broken\.png"):
        train_on_ray(_config(photos, tmp_path / "x"), address=address)
    finished = tmp_path / "done"
    finished.mkdir()
    (finished / "dreamloom.json").write_text("{}")
    with pytest.raises(DreamloomError, match="already holds a finished artifact"):
        train_on_ray(_config(photos, finished), address=address)
    assert len(_jobs(address)) == before

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(DreamloomError, match="needs RAY_ADDRESS"):
        train_on_ray(_config(photos, tmp_path / "y"))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    with pytest.raises(DreamloomError, match="dashboard's http address"):
        train_on_ray(_config(photos, tmp_path / "y"))


class RayBackedKubeRay:
    """Plays the KubeRay operator for one namespace: a created RayJob runs on the real Ray cluster."""

    DEPLOYMENT: ClassVar[dict[str, str]] = {
        "PENDING": "Initializing",
        "RUNNING": "Running",
        "SUCCEEDED": "Complete",
        "FAILED": "Failed",
        "STOPPED": "Failed",
    }

    def __init__(self, address: str, secrets: dict[str, dict[str, str]]):
        from ray.job_submission import JobSubmissionClient

        self.client, self.secrets, self.created, self.jobs = JobSubmissionClient(address), secrets, [], {}

    def create(self, document: dict) -> None:
        validate_custom_resource(document)
        self.created.append(document)
        spec = document["spec"]
        (container,) = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
        env = dict(self._resolve(entry) for entry in container["env"])
        env.update(json.loads(spec["runtimeEnvYAML"])["env_vars"])
        env = {name: value for name, value in env.items() if value is not None}
        self.jobs[document["metadata"]["name"]] = submit_when_ready(
            self.client, entrypoint=spec["entrypoint"], runtime_env={"env_vars": env}
        )

    def _resolve(self, entry: dict) -> tuple[str, str | None]:
        if "value" in entry:
            return entry["name"], entry["value"]
        ref = entry["valueFrom"]["secretKeyRef"]
        value = self.secrets.get(ref["name"], {}).get(ref["key"])
        assert value is not None or ref.get("optional"), f"missing secret {ref}"
        return entry["name"], value

    def status(self, namespace: str, name: str) -> dict:
        state = self.client.get_job_status(self.jobs[name]).value
        return {"jobStatus": state, "jobDeploymentStatus": self.DEPLOYMENT[state]}

    def logs(self, namespace: str, name: str) -> str:
        return self.client.get_job_logs(self.jobs[name])

    def delete(self, namespace: str, name: str) -> None:
        self.client.stop_job(self.jobs[name])


def test_the_kuberay_launcher_runs_the_rendered_rayjob_and_collects_the_artifact(ray_cluster, photos, tmp_path):
    address, _ = ray_cluster
    volume = tmp_path / "volume"  # the shared claim, as mounted by the train step and the Ray pods
    operator = RayBackedKubeRay(address, {"dreamloom-mlflow": {"tracking-uri": tracking_uri()}})
    config = _config(photos, tmp_path / "out" / "kuberay-lora")
    settings = RayJobSettings(namespace="team-a", data_mount=str(volume))

    result = train_on_kuberay(config, cluster=operator, settings=settings, poll_s=0.5)

    (document,) = operator.created
    assert document["metadata"] == {**document["metadata"], "name": job_name(config), "namespace": "team-a"}
    manifest = read_manifest(result.artifact)
    assert manifest.steps == 4 and manifest.run_name == "kuberay-lora"
    assert str(manifest.config.data.path) == str(volume / "dreamloom" / "jobs" / job_name(config) / "instance")
    assert (volume / "dreamloom" / "runs" / "kuberay-lora").is_dir()  # checkpoints on the shared volume
    assert not (volume / "dreamloom" / "jobs" / job_name(config)).exists()  # staged images cleaned up


def test_a_failed_rayjob_is_reported_and_cleaned_up(ray_cluster, photos, tmp_path):
    address, _ = ray_cluster
    volume = tmp_path / "volume"
    operator = RayBackedKubeRay(address, {"dreamloom-mlflow": {"tracking-uri": tracking_uri()}})
    config = _config(photos, tmp_path / "out" / "doomed", base_model=str(tmp_path / "no-such-model"))
    with pytest.raises(DreamloomError, match=r"RayJob dreamloom/dl-doomed failed \(Failed\): .*no-such-model"):
        train_on_kuberay(config, cluster=operator, settings=RayJobSettings(data_mount=str(volume)), poll_s=0.5)
    assert not config.output.exists() and not (volume / "dreamloom" / "jobs" / "dl-doomed").exists()
