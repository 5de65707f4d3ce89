"""The personalize pipeline: prepare -> train -> evaluate -> register -> gate -> promote -> deploy.

Submit it from the KFP UI (upload ``personalize.yaml``) or run it with ``dreamloom pipeline run
--local CONFIG`` / ``dreamloom pipeline submit --host URL CONFIG``. Steps with side effects are
never cached; steps that talk to MLflow or Triton retry; credentials come from Kubernetes secrets
(``dreamloom-mlflow``, ``dreamloom-object-store``), never from parameters; training asks for a GPU
and tolerates GPU-node taints.
"""

from pathlib import Path

from kfp import dsl, kubernetes

from components import deploy, evaluate, gate, prepare_data, promote, register, train
from dreamloom.k8s.rayjob import SETTINGS_ENV, RayJobSettings
from dreamloom.k8s.secrets import SECRET_ENV

COMPILED = Path(__file__).with_name("personalize.yaml")
GPU_RESOURCE = "nvidia.com/gpu"
DATA_CLAIM = RayJobSettings.data_claim
TRAINING_SETTINGS = "dreamloom-training"  # the chart's ConfigMap
SERVING_CLAIM, SERVING_MOUNT = "dreamloom-serving", "/serving"  # Triton's model repository and adapters


# Helpers come first: KFP builds the pipeline graph when the decorator runs.
def _talks_to_services(task: dsl.PipelineTask, retries: int = 3) -> dsl.PipelineTask:
    """No caching (side effects), retries with backoff, and the service credentials as env."""
    task.set_caching_options(False)
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2.0)
    for secret, keys in SECRET_ENV.items():
        kubernetes.use_secret_as_env(task, secret, keys, optional=True)
    return task


def _on_gpu_nodes(task: dsl.PipelineTask, gpus) -> None:
    """``gpus`` is a pipeline parameter: 0 when a Ray cluster (not this pod) does the training."""
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
    task.set_cpu_request("4").set_memory_request("32G")
    kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    # The kuberay launcher stages images here for the RayJob's pods, which mount the same claim,
    # and renders RayJobs with the chart's settings (image, service account, worker group).
    kubernetes.mount_pvc(task, pvc_name=DATA_CLAIM, mount_path=RayJobSettings.data_mount)
    kubernetes.use_config_map_as_env(task, TRAINING_SETTINGS, {"rayjob-settings.json": SETTINGS_ENV}, optional=True)


@dsl.pipeline(name="dreamloom-personalize", description="Teach a base model a concept, gate it, serve it.")
def personalize(
    config: dict,
    model_name: str,
    gate_config: dict = {},  # noqa: B006 (KFP parameters are literals)
    triton_url: str = "",
    serving_store: str = "",
    eval_images_per_prompt: int = 4,
    eval_steps: int = 25,
    launcher: str = "local",
    ray_address: str = "",
    train_gpus: str = "1",
):
    prepared = prepare_data(config=config)
    trained = _talks_to_services(
        train(
            config=config,
            dataset_hash=prepared.outputs["Output"],
            run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            launcher=launcher,
            ray_address=ray_address,
        ),
        retries=0,
    )
    _on_gpu_nodes(trained, train_gpus)
    judged = _talks_to_services(
        evaluate(model=trained.outputs["model"], images_per_prompt=eval_images_per_prompt, steps=eval_steps)
    )
    registered = _talks_to_services(
        register(model=trained.outputs["model"], name=model_name, eval_run_id=judged.outputs["Output"])
    )
    verdict = _talks_to_services(gate(name=model_name, version=registered.output, gate_config=gate_config))
    with dsl.If(verdict.output == True, name="gate-passed"):  # noqa: E712 (a KFP condition, not Python)
        promoted = _talks_to_services(promote(name=model_name, version=registered.output, gate_config=gate_config))
        with dsl.If(triton_url != "", name="serving-configured"):
            deployed = _talks_to_services(deploy(reference=promoted.output, triton_url=triton_url, store=serving_store))
            kubernetes.mount_pvc(deployed, pvc_name=SERVING_CLAIM, mount_path=SERVING_MOUNT)


def compile_pipeline(path: Path = COMPILED) -> Path:
    from kfp import compiler

    compiler.Compiler().compile(personalize, str(path))
    return path
