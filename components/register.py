from kfp import dsl
from kfp.dsl import Input, Model

from components._image import COMPONENT


@dsl.component(**COMPONENT)
def register(model: Input[Model], name: str, eval_run_id: str) -> str:
    """A new MLflow model version of ``name`` with the evaluation's metrics; returns the version."""
    from pathlib import Path

    from dreamloom.registry import register as register_version
    from dreamloom.registry.store import evaluation_of_run

    return str(register_version(Path(model.path), name, evaluation_of_run(eval_run_id)).version)
