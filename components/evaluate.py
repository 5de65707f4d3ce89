from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components._image import COMPONENT


@dsl.component(**COMPONENT)
def evaluate(
    model: Input[Model],
    dataset: Input[Dataset],
    metrics: Output[Metrics],
    samples: Output[HTML],
    images_per_prompt: int = 4,
    steps: int = 25,
) -> str:
    """Score the artifact's prompt and subject fidelity and render its sample grids.

    Args:
        model: The trained artifact.
        dataset: The prepared training set: the subject's real images that fidelity is measured against.
        images_per_prompt: Seeded images per evaluation prompt.
        steps: Denoising steps per image.

    Returns:
        metrics: CLIP-T (prompt fidelity), CLIP-I and DINO (subject fidelity), or layout following
            for a ControlNet; also logged to MLflow.
        samples: One seeded sample grid per evaluation prompt, as a page for the KFP UI.
        Output: The MLflow run id of the evaluation (register attaches its metrics to the version).
    """
    from pathlib import Path

    from dreamloom.evaluation import evaluate_artifact, grids_html, log_evaluation
    from dreamloom.steps import run_step

    def work():
        artifact = Path(model.path)
        result, settings = evaluate_artifact(
            artifact, references=Path(dataset.path), images_per_prompt=images_per_prompt, steps=steps
        )
        run_id = log_evaluation(result, settings, {"evaluated": artifact.name, "artifact": str(artifact)})
        for name, value in result.metrics.items():
            metrics.log_metric(name, value)
        Path(samples.path).write_text(grids_html(result, f"{settings.subject}: evaluation"))
        return run_id

    return run_step(work)
