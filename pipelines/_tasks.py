"""How pipeline steps are run, shared by every pipeline: service credentials from Kubernetes
secrets, no caching for steps with side effects (retries happen inside the steps, for transient
failures only), and
GPU scheduling plus the shared volume for training steps."""

from kfp import dsl, kubernetes

from dreamloom.k8s.rayjob import DATA_CLAIM, DATA_MOUNT, SETTINGS_ENV
from dreamloom.k8s.secrets import SECRET_ENV, TRITON_ADMIN_SECRET
from dreamloom.serving.repository import ADMIN_KEY_ENV

GPU_RESOURCE = "nvidia.com/gpu"
TRAINING_SETTINGS = "dreamloom-training"  # the chart's ConfigMap
SERVING_CLAIM, SERVING_MOUNT = "dreamloom-serving", "/serving"  # Triton's model repository and adapters


def talks_to_services(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """No caching (side effects) and the service credentials as env. No KFP retries: KFP cannot tell
    a user's error from a service's hiccup, so steps retry transient failures themselves and stop
    at once on a refusal (dreamloom/steps.py)."""
    task.set_caching_options(False)
    for secret, keys in SECRET_ENV.items():
        kubernetes.use_secret_as_env(task, secret, keys, optional=True)
    return task


def trains(task: dsl.PipelineTask, gpus) -> dsl.PipelineTask:
    """A training step: ``gpus`` (a pipeline parameter; 0 when a Ray cluster, not this pod, trains),
    GPU-node tolerations, the shared data volume and the chart's RayJob settings."""
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
    task.set_cpu_request("4").set_memory_request("32G")
    kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    # The kuberay launcher stages images here for the RayJob's pods, which mount the same claim,
    # and renders RayJobs with the chart's settings (image, service account, worker group).
    kubernetes.mount_pvc(task, pvc_name=DATA_CLAIM, mount_path=DATA_MOUNT)
    kubernetes.use_config_map_as_env(task, TRAINING_SETTINGS, {"rayjob-settings.json": SETTINGS_ENV}, optional=True)
    return task


def serves(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """A step that deploys to Triton: the serving volume, where the model repository lives, and
    Triton's admin key (model control answers nothing else)."""
    kubernetes.mount_pvc(task, pvc_name=SERVING_CLAIM, mount_path=SERVING_MOUNT)
    kubernetes.use_secret_as_env(task, TRITON_ADMIN_SECRET, {"admin-key": ADMIN_KEY_ENV})
    return task
