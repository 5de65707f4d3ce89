"""The personalize pipeline: prepare -> train -> evaluate -> register -> gate -> promote -> deploy.

Submit it from the KFP UI (upload ``personalize.yaml``) or run it with ``dreamloom pipeline run
--local CONFIG`` / ``dreamloom pipeline submit --host URL CONFIG``. Steps with side effects are
never cached; steps that talk to MLflow or Triton retry; credentials come from Kubernetes secrets
(``dreamloom-mlflow``, ``dreamloom-object-store``), never from parameters; training asks for a GPU
and tolerates GPU-node taints.
"""

from pathlib import Path

from kfp import dsl

from components import deploy, evaluate, gate, prepare_data, promote, register, train
from dreamloom.k8s.names import DEFAULT_RELEASE, ReleaseNames
from pipelines._tasks import serves, talks_to_services, trains

COMPILED = Path(__file__).with_name("personalize.yaml")


def personalize_pipeline(release: ReleaseNames = DEFAULT_RELEASE):
    """The personalize pipeline for a release of the chart: its steps mount that release's claims
    and read its RayJob settings."""

    @dsl.pipeline(name=release.pipeline("personalize"), description="Teach a base model a concept, gate it, serve it.")
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
        train_gpus: int = 1,
    ):
        """Teach a base model a concept, judge it against the champion, and serve it when it passes.

        Args:
            config: The run config, as in a run YAML without `output`: method, base model, data, settings.
            model_name: The registered model the new version joins (one per concept).
            gate_config: The promotion gate: thresholds, the tolerance against the champion; empty for defaults.
            triton_url: Triton's HTTP address; empty to register and promote without deploying.
            serving_store: The serving store Triton reads (its model repository and adapters).
            eval_images_per_prompt: Seeded images per evaluation prompt.
            eval_steps: Denoising steps per evaluation image.
            launcher: Where training runs: `local` (in the train step's pod), `ray` or `kuberay`.
            ray_address: The Ray cluster's dashboard address for the `ray` launcher.
            train_gpus: GPUs of the train step's pod (0 when a Ray cluster trains).
        """
        prepared = prepare_data(config=config)
        trained = talks_to_services(
            train(
                config=config,
                dataset=prepared.outputs["dataset"],
                run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                launcher=launcher,
                ray_address=ray_address,
            )
        )
        trains(trained, train_gpus, release)
        judged = talks_to_services(
            evaluate(
                model=trained.outputs["model"],
                dataset=prepared.outputs["dataset"],
                images_per_prompt=eval_images_per_prompt,
                steps=eval_steps,
            )
        )
        registered = talks_to_services(
            register(model=trained.outputs["model"], name=model_name, eval_run_id=judged.outputs["Output"])
        )
        verdict = talks_to_services(gate(name=model_name, version=registered.output, gate_config=gate_config))
        with dsl.If(verdict.output == True, name="gate-passed"):  # noqa: E712 (a KFP condition, not Python)
            promoted = talks_to_services(promote(name=model_name, version=registered.output, gate_config=gate_config))
            with dsl.If(triton_url != "", name="serving-configured"):
                serves(
                    talks_to_services(deploy(reference=promoted.output, triton_url=triton_url, store=serving_store)),
                    release,
                )

    return personalize


personalize = personalize_pipeline()  # for the release named dreamloom, and local runs
