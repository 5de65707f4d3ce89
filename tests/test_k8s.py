"""Kubernetes objects: the training RayJob rendered from a run config, checked against KubeRay's CRD."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import pytest

from dreamloom.config import RunConfig
from dreamloom.errors import DreamloomError
from dreamloom.k8s.rayjob import GPU, SETTINGS_ENV, RayJobSettings, settings_from_environment
from dreamloom.k8s.schemas import validate_custom_resource
from dreamloom.k8s.secrets import SECRET_ENV
from dreamloom.training.job import CONFIG_ENV, RESUME_ENV
from dreamloom.training.kuberay import job_name, rayjob_for
from tests.helpers import run_config


@pytest.fixture
def gpu_config(tmp_path) -> RunConfig:
    config = run_config(tmp_path, tmp_path / "out" / "shoe-lora", scaling__workers=2, scaling__gpus_per_worker=1)
    return config


def test_the_rayjob_has_a_gpu_worker_group_sized_from_the_run_config(gpu_config):
    job = rayjob_for(gpu_config)
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert len(workers) == 1 and workers[0]["groupName"] == "gpu-workers"
    assert workers[0]["replicas"] == workers[0]["minReplicas"] == workers[0]["maxReplicas"] == 2
    pod = workers[0]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"][GPU] == "1"
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert GPU not in head["containers"][0]["resources"]["limits"] and "tolerations" not in head


def test_the_rayjob_shuts_down_retries_and_has_deadlines(gpu_config):
    spec = rayjob_for(gpu_config, RayJobSettings(backoff_limit=4, active_deadline_seconds=7200))["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["backoffLimit"] == 4 and spec["activeDeadlineSeconds"] == 7200
    env = json.loads(spec["runtimeEnvYAML"])["env_vars"]
    assert env[CONFIG_ENV] == gpu_config.model_dump_json() and env[RESUME_ENV] == "auto"


def test_every_container_runs_hardened_with_the_service_account_and_secret_references(gpu_config):
    job = rayjob_for(gpu_config, RayJobSettings(service_account="trainer", image="registry.example/dl:1"))
    cluster = job["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        assert pod["serviceAccountName"] == "trainer" and pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        assert container["image"] == "registry.example/dl:1"
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        from_secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
        tracking = {"name": "dreamloom-mlflow", "key": "tracking-uri", "optional": True}
        assert from_secrets["MLFLOW_TRACKING_URI"] == tracking
        assert set(from_secrets) == {env for keys in SECRET_ENV.values() for env in keys.values()}
        assert [e["name"] for e in container["env"] if "value" in e] == ["DREAMLOOM_HOME"]


def test_a_cpu_run_renders_without_gpus(tmp_path):
    job = rayjob_for(run_config(tmp_path, tmp_path / "cpu-run", scaling__workers=1))
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["groupName"] == "cpu-workers" and GPU not in json.dumps(group)


def test_invalid_or_unknown_fields_are_refused_with_their_path(gpu_config):
    job = rayjob_for(gpu_config)
    broken = copy.deepcopy(job)
    broken["spec"]["backoffLimit"] = "twice"
    broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replcas"] = 3
    with pytest.raises(DreamloomError) as refused:
        validate_custom_resource(broken)
    assert "spec.backoffLimit: 'twice' is not of type 'integer'" in str(refused.value)
    assert "workerGroupSpecs[0].replcas: unknown field" in str(refused.value)
    with pytest.raises(DreamloomError, match="no CRD schema"):
        validate_custom_resource({**job, "kind": "RayThing"})


def test_job_names_are_dns_labels_and_fractional_gpus_are_refused(tmp_path):
    config = run_config(tmp_path, tmp_path / "out", run_name="Shoe_LoRA.v2--final" + "x" * 60)
    name = job_name(config)
    assert name.startswith("dl-shoe-lora-v2-final") and len(name) <= 47 and name[-1] != "-"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
    with pytest.raises(DreamloomError, match="whole number"):
        rayjob_for(run_config(tmp_path, tmp_path / "o", scaling__gpus_per_worker=0.5))


def test_the_entrypoint_refuses_to_run_outside_a_rayjob():
    done = subprocess.run([sys.executable, "-m", "dreamloom.training.entrypoint"], capture_output=True, text=True)
    assert done.returncode == 2 and CONFIG_ENV in done.stderr


def test_the_train_step_renders_rayjobs_with_the_charts_settings(monkeypatch, gpu_config):
    pool = {"key": "pool", "operator": "Exists", "effect": "NoSchedule"}
    chart_settings = {
        "namespace": "team-a",
        "image": "registry.example/dl:2",
        "service_account": "trainer-a",
        "worker_tolerations": [pool],
    }
    monkeypatch.setenv(SETTINGS_ENV, json.dumps(chart_settings))
    job = rayjob_for(gpu_config, settings_from_environment())
    assert job["metadata"]["namespace"] == "team-a"
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert worker["serviceAccountName"] == "trainer-a" and worker["containers"][0]["image"] == "registry.example/dl:2"
    assert [t["key"] for t in worker["tolerations"]] == ["pool", GPU]

    monkeypatch.setenv(SETTINGS_ENV, json.dumps({"imag": "typo"}))
    with pytest.raises(DreamloomError, match=r"DREAMLOOM_RAYJOB_SETTINGS is not valid RayJob settings: .*'imag'"):
        settings_from_environment()
