from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Model, Output

from components._image import COMPONENT


@dsl.component(**COMPONENT)
def train(
    config: dict, dataset_hash: str, run_name: str, model: Output[Model], launcher: str = "local", ray_address: str = ""
) -> NamedTuple("Trained", mlflow_run_id=str, steps=int):
    """Train and write the artifact. ``launcher``: ``local`` (Ray Train inside this pod), ``ray``
    (a job on the Ray cluster at ``ray_address``) or ``kuberay`` (a RayJob in this namespace).
    ``run_name`` (the pipeline run's, unless the config names one) keys the run's checkpoints."""
    from collections import namedtuple

    from dreamloom.config import pipeline_run_config
    from dreamloom.training.launcher import launch

    run = pipeline_run_config({**config, "run_name": config.get("run_name") or run_name}, output=model.path)
    result = launch(run, launcher, ray_address=ray_address or None)
    model.metadata.update({"method": run.method, "base_model": run.base_model, "dataset_hash": dataset_hash})
    return namedtuple("Trained", ["mlflow_run_id", "steps"])(result.mlflow_run_id, result.steps)
