"""How pipeline steps are run, shared by every pipeline: service credentials from Kubernetes
secrets, no caching for steps with side effects (retries happen inside the steps, for transient
failures only), GPU scheduling for training steps, and the volumes and settings of the chart's
release the pipeline is compiled for (``dreamloom.k8s.names``)."""

from kfp import dsl, kubernetes

from dreamloom.k8s.names import ReleaseNames
from dreamloom.k8s.rayjob import DATA_MOUNT, SETTINGS_ENV
from dreamloom.k8s.secrets import SECRET_ENV, TRITON_ADMIN_SECRET
from dreamloom.serving.repository import ADMIN_KEY_ENV

GPU_RESOURCE = "nvidia.com/gpu"
SERVING_MOUNT = "/serving"  # Triton's model repository and adapters


def talks_to_services(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """No caching (side effects) and the service credentials as env. No KFP retries: KFP cannot tell
    a user's error from a service's hiccup, so steps retry transient failures themselves and stop
    at once on a refusal (dreamloom/steps.py)."""
    task.set_caching_options(False)
    for secret, keys in SECRET_ENV.items():
        kubernetes.use_secret_as_env(task, secret, keys, optional=True)
    return task


def trains(task: dsl.PipelineTask, gpus, release: ReleaseNames) -> dsl.PipelineTask:
    """A training step: ``gpus`` (a pipeline parameter; 0 when a Ray cluster, not this pod, trains),
    GPU-node tolerations, and the ``release``'s shared data volume and RayJob settings."""
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
    task.set_cpu_request("4").set_memory_request("32G")
    kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    # The kuberay launcher stages images here for the RayJob's pods, which mount the same claim,
    # and renders RayJobs with the chart's settings (image, service account, worker group).
    kubernetes.mount_pvc(task, pvc_name=release.data_claim, mount_path=DATA_MOUNT)
    settings = {"rayjob-settings.json": SETTINGS_ENV}
    kubernetes.use_config_map_as_env(task, release.training_settings, settings, optional=True)
    return task


def serves(task: dsl.PipelineTask, release: ReleaseNames) -> dsl.PipelineTask:
    """A step that deploys to Triton: the ``release``'s serving volume, where the model repository
    lives, and Triton's admin key (model control answers nothing else)."""
    kubernetes.mount_pvc(task, pvc_name=release.serving_claim, mount_path=SERVING_MOUNT)
    kubernetes.use_secret_as_env(task, TRITON_ADMIN_SECRET, {"admin-key": ADMIN_KEY_ENV})
    return task
