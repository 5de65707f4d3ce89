"""The RayJob that trains a run on KubeRay: a CPU head, a GPU worker group sized from the run
config, the run config handed to the entrypoint, the cluster shut down when the job ends.

Rendered as a plain dict and validated against KubeRay's CRD before anything talks to a cluster.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from dreamloom.config import RunConfig
from dreamloom.errors import DreamloomError
from dreamloom.k8s.secrets import secret_env_vars
from dreamloom.settings import container_image
from dreamloom.training.entrypoint import CONFIG_ENV, RESUME_ENV

API_VERSION, KIND = "ray.io/v1", "RayJob"
SETTINGS_ENV = "DREAMLOOM_RAYJOB_SETTINGS"
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
GPU = "nvidia.com/gpu"


@dataclass(frozen=True)
class RayJobSettings:
    namespace: str = "dreamloom"
    image: str = field(default_factory=container_image)
    service_account: str = "dreamloom-trainer"
    data_claim: str = "dreamloom-data"  # a ReadWriteMany PVC on head, workers and the train step: data, checkpoints
    data_mount: str = "/data"
    worker_cpu: str = "8"
    worker_memory: str = "48Gi"
    head_cpu: str = "2"
    head_memory: str = "8Gi"
    backoff_limit: int = 2  # retries of the whole job (each on a fresh cluster)
    active_deadline_seconds: int = 48 * 3600
    ttl_seconds_after_finished: int = 3600
    ray_version: str = "2.60.0"
    worker_node_selector: dict = field(default_factory=dict)  # added to nvidia.com/gpu.present on GPU workers
    worker_tolerations: list = field(default_factory=list)  # added to the GPU taint's toleration
    run_as_user: int = 1000
    fs_group: int = 1000

    @classmethod
    def from_json(cls, text: str) -> RayJobSettings:
        """Settings as the chart writes them (ConfigMap dreamloom-training); unknown keys are refused."""
        try:
            values = json.loads(text)
            return cls(**values)
        except (ValueError, TypeError) as exc:
            raise DreamloomError(f"{SETTINGS_ENV} is not valid RayJob settings: {exc}") from None


def settings_from_environment() -> RayJobSettings:
    """In a pipeline step: the chart's settings (``DREAMLOOM_RAYJOB_SETTINGS``, from the
    ``dreamloom-training`` ConfigMap), else the defaults in this pod's namespace."""
    document = os.environ.get(SETTINGS_ENV)
    settings = RayJobSettings.from_json(document) if document else RayJobSettings()
    if not document and NAMESPACE_FILE.is_file():
        settings = replace(settings, namespace=NAMESPACE_FILE.read_text().strip())
    return settings


def job_name(config: RunConfig) -> str:
    """A DNS-1123 name for the run (RayJob names become Service names: at most 47 characters)."""
    name = re.sub(r"[^a-z0-9]+", "-", config.effective_run_name.lower()).strip("-")
    if not name:
        raise DreamloomError(f"run name {config.effective_run_name!r} has no letters or digits to name a RayJob with")
    return f"dl-{name}"[:47].rstrip("-")


def render_rayjob(config: RunConfig, settings: RayJobSettings = RayJobSettings()) -> dict:
    gpus = int(config.scaling.gpus_per_worker)
    if config.scaling.gpus_per_worker and config.scaling.gpus_per_worker != gpus:
        raise DreamloomError("on KubeRay, scaling.gpus_per_worker must be a whole number of GPUs")
    workers = config.scaling.workers
    document = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": job_name(config),
            "namespace": settings.namespace,
            "labels": {"app.kubernetes.io/part-of": "dreamloom", "dreamloom.ai/method": config.method},
        },
        "spec": {
            "entrypoint": "python -m dreamloom.training.entrypoint",
            # A retry of the job (a fresh cluster) continues from the run's last checkpoint.
            "runtimeEnvYAML": json.dumps({"env_vars": {CONFIG_ENV: config.model_dump_json(), RESUME_ENV: "auto"}}),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
            "backoffLimit": settings.backoff_limit,
            "activeDeadlineSeconds": settings.active_deadline_seconds,
            "submissionMode": "K8sJobMode",
            "rayClusterSpec": {
                "rayVersion": settings.ray_version,
                "headGroupSpec": {
                    "rayStartParams": {"num-gpus": "0"},
                    "template": _pod(settings, "ray-head", settings.head_cpu, settings.head_memory, 0),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "gpu-workers" if gpus else "cpu-workers",
                        "replicas": workers,
                        "minReplicas": workers,
                        "maxReplicas": workers,
                        "rayStartParams": {},
                        "template": _pod(settings, "ray-worker", settings.worker_cpu, settings.worker_memory, gpus),
                    }
                ],
            },
        },
    }
    from dreamloom.k8s.schemas import validate_custom_resource

    validate_custom_resource(document)
    return document


def _pod(settings: RayJobSettings, container: str, cpu: str, memory: str, gpus: int) -> dict:
    """The pod template of a Ray node; the chart's RayCluster renders the same (a test compares)."""
    resources = {"cpu": cpu, "memory": memory, **({GPU: str(gpus)} if gpus else {})}
    spec = {
        "serviceAccountName": settings.service_account,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.fs_group,
            "fsGroup": settings.fs_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": container,
                "image": settings.image,
                "resources": {"requests": resources, "limits": resources},
                "env": [{"name": "DREAMLOOM_HOME", "value": f"{settings.data_mount}/dreamloom"}, *secret_env_vars()],
                "volumeMounts": [
                    {"name": "data", "mountPath": settings.data_mount},
                    {"name": "shm", "mountPath": "/dev/shm"},
                    {"name": "tmp", "mountPath": "/tmp"},  # Ray's session files; the root filesystem is read-only
                ],
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "privileged": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": settings.data_claim}},
            {"name": "shm", "emptyDir": {"medium": "Memory"}},  # NCCL and dataloaders need more than 64 MiB
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if gpus:
        spec["nodeSelector"] = {"nvidia.com/gpu.present": "true", **settings.worker_node_selector}
        spec["tolerations"] = [*settings.worker_tolerations, {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]
    return {"spec": spec}
