from kfp import dsl
from kfp.dsl import Input, Model

from components._image import COMPONENT


@dsl.component(**COMPONENT)
def register(model: Input[Model], name: str, eval_run_id: str) -> str:
    """Register the artifact as a new MLflow model version with its evaluation and lineage.

    The artifact's content is checked first (no pickles, finite tensors, files matching their
    digests, the base found at its recorded revision); nothing is registered when it fails.

    Args:
        model: The trained artifact.
        name: The registered model (one per concept); its versions share one base model.
        eval_run_id: The evaluation run whose metrics the version carries (the gate reads them).

    Returns:
        Output: The new version's number.
    """
    from pathlib import Path

    from dreamloom.registry import register as register_version
    from dreamloom.registry.store import evaluation_of_run
    from dreamloom.steps import run_step

    def work():
        return str(register_version(Path(model.path), name, evaluation_of_run(eval_run_id)).version)

    return run_step(work)
