"""A RayJob on KubeRay: a CPU head, a worker group of whole GPUs (or CPUs), an entrypoint with its
environment, the cluster shut down when the job ends, retries and deadlines.

Rendered as a plain dict from a ``RayJobSpec`` (what to run) and ``RayJobSettings`` (how the
chart sets pods up), and validated against KubeRay's CRD before anything talks to a cluster. What
the job is (dreamloom's training entrypoint and its run config) is the kuberay launcher's business
(``dreamloom.training.kuberay``); this module only renders.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dreamloom.errors import DreamloomError
from dreamloom.k8s.names import DEFAULT_RELEASE
from dreamloom.k8s.secrets import secret_env_vars
from dreamloom.settings import container_image

API_VERSION, KIND = "ray.io/v1", "RayJob"
SETTINGS_ENV = "DREAMLOOM_RAYJOB_SETTINGS"
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
GPU = "nvidia.com/gpu"
DATA_MOUNT = "/data"
MAX_NAME = 47  # RayJob names become Service names


class RayJobSettings(BaseModel):
    """How RayJob pods are set up, as the chart writes it (ConfigMap ``<release>-training``); the
    defaults are those of a release named ``dreamloom``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field("dreamloom", min_length=1)
    image: str = Field(default_factory=container_image, min_length=1)
    service_account: str = DEFAULT_RELEASE.trainer_account
    data_claim: str = Field(
        DEFAULT_RELEASE.data_claim, description="A ReadWriteMany PVC on head, workers and the train step"
    )
    data_mount: str = DATA_MOUNT
    worker_cpu: str = "8"
    worker_memory: str = "48Gi"
    head_cpu: str = "2"
    head_memory: str = "8Gi"
    backoff_limit: int = Field(2, ge=0, description="Retries of the whole job (each on a fresh cluster)")
    active_deadline_seconds: int = Field(48 * 3600, ge=1)
    ttl_seconds_after_finished: int = Field(3600, ge=0)
    ray_version: str = "2.60.0"
    worker_node_selector: dict[str, str] = Field(
        default_factory=dict, description="Added to nvidia.com/gpu.present on GPU workers"
    )
    worker_tolerations: list[dict] = Field(default_factory=list, description="Added to the GPU taint's toleration")
    run_as_user: int = Field(1000, ge=1)
    fs_group: int = Field(1000, ge=1)

    @classmethod
    def from_json(cls, text: str) -> RayJobSettings:
        """Settings as the chart writes them; unknown keys are refused."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'!r}: {e['msg']}" for e in exc.errors())
            raise DreamloomError(f"{SETTINGS_ENV} is not valid RayJob settings: {problems}") from None


def settings_from_environment() -> RayJobSettings:
    """In a pipeline step: the chart's settings (``DREAMLOOM_RAYJOB_SETTINGS``, from the
    release's ``<release>-training`` ConfigMap), else the defaults in this pod's namespace."""
    document = os.environ.get(SETTINGS_ENV)
    settings = RayJobSettings.from_json(document) if document else RayJobSettings()
    if not document and NAMESPACE_FILE.is_file():
        settings = settings.model_copy(update={"namespace": NAMESPACE_FILE.read_text().strip()})
    return settings


@dataclass(frozen=True)
class RayJobSpec:
    """What a RayJob runs, and on how many workers."""

    name: str
    entrypoint: str
    env: dict[str, str]
    workers: int
    gpus_per_worker: float = 0
    labels: dict[str, str] | None = None


def dns_name(text: str, prefix: str = "dl-") -> str:
    """A DNS-1123 label from ``text`` (at most 47 characters), or "" when it has no letters or digits."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return f"{prefix}{name}"[:MAX_NAME].rstrip("-") if name else ""


def render_rayjob(spec: RayJobSpec, settings: RayJobSettings | None = None) -> dict:
    settings = settings or RayJobSettings()
    gpus = int(spec.gpus_per_worker)
    if spec.gpus_per_worker != gpus:
        raise DreamloomError(f"RayJob workers take a whole number of GPUs, not {spec.gpus_per_worker:g}")
    workers = spec.workers
    document = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": spec.name,
            "namespace": settings.namespace,
            "labels": {"app.kubernetes.io/part-of": "dreamloom", **(spec.labels or {})},
        },
        "spec": {
            "entrypoint": spec.entrypoint,
            "runtimeEnvYAML": json.dumps({"env_vars": spec.env}),
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
