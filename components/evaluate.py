from kfp import dsl
from kfp.dsl import HTML, Input, Metrics, Model, Output

from components._image import COMPONENT


@dsl.component(**COMPONENT)
def evaluate(
    model: Input[Model], metrics: Output[Metrics], samples: Output[HTML], images_per_prompt: int = 4, steps: int = 25
) -> str:
    """Prompt and subject fidelity (logged to MLflow and to the KFP UI) and the sample grids as
    an HTML page; returns the MLflow evaluation run id."""
    from pathlib import Path

    from dreamloom.evaluation import evaluate_artifact, grids_html, log_evaluation

    artifact = Path(model.path)
    result, settings = evaluate_artifact(artifact, images_per_prompt=images_per_prompt, steps=steps)
    run_id = log_evaluation(result, settings, {"evaluated": artifact.name, "artifact": str(artifact)})
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    with open(samples.path, "w") as handle:
        handle.write(grids_html(result, f"{settings.subject}: evaluation"))
    return run_id
