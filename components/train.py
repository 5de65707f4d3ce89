from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components._image import COMPONENT


@dsl.component(**COMPONENT)
def train(
    config: dict,
    dataset: Input[Dataset],
    run_name: str,
    model: Output[Model],
    launcher: str = "local",
    ray_address: str = "",
) -> NamedTuple("Trained", mlflow_run_id=str, steps=int):
    """Train the run's method on the prepared set and write its artifact.

    Args:
        config: The run config, as in a run YAML without `output`.
        dataset: The prepared training set from prepare-data (trained on as it is, not prepared again).
        run_name: Keys the run's checkpoints (a retried step resumes them); the config's run_name
            wins when it names one.
        launcher: Where training runs: `local` (Ray Train inside this pod), `ray` (a job on the Ray
            cluster at ray_address) or `kuberay` (a RayJob in this namespace).
        ray_address: The Ray cluster's dashboard address for the `ray` launcher (default: RAY_ADDRESS).

    Returns:
        model: The artifact: the method's weights (safetensors) and their manifest.
        mlflow_run_id: The MLflow run holding the losses, sample grids and artifact.
        steps: Optimizer steps trained.
    """
    from collections import namedtuple

    from dreamloom.config import pipeline_run_config
    from dreamloom.steps import run_step
    from dreamloom.training.launcher import launch

    def work():
        document = {**config, "run_name": config.get("run_name") or run_name}
        run = pipeline_run_config(document, output=model.path, prepared_data=dataset.path)
        result = launch(run, launcher, ray_address=ray_address or None)
        model.metadata.update(
            {
                "method": run.method,
                "base_model": run.base_model,
                "dataset_hash": dataset.metadata.get("dataset_hash", ""),
            }
        )
        return namedtuple("Trained", ["mlflow_run_id", "steps"])(result.mlflow_run_id, result.steps)

    return run_step(work, attempts=1)
