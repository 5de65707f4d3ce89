from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Model, Output

from components._image import COMPONENT


@dsl.component(**COMPONENT)
def train(config: dict, dataset_hash: str, run_name: str, model: Output[Model]) -> NamedTuple(
    "Trained", mlflow_run_id=str, steps=int
):
    """Train with Ray Train (the local Ray of this pod, or RAY_ADDRESS) and write the artifact.
    ``run_name`` (the pipeline run's, unless the config names one) keys the run's checkpoints."""
    from collections import namedtuple

    from dreamloom.config import pipeline_run_config
    from dreamloom.training.launcher import train as run_training

    run = pipeline_run_config({**config, "run_name": config.get("run_name") or run_name}, output=model.path)
    result = run_training(run)
    model.metadata.update({"method": run.method, "base_model": run.base_model, "dataset_hash": dataset_hash})
    return namedtuple("Trained", ["mlflow_run_id", "steps"])(result.mlflow_run_id, result.steps)
