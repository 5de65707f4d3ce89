"""The augmentation pipeline's steps: check the classes, teach one (in parallel over classes),
then deploy, generate and compare."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Metrics, Output

from components._image import COMPONENT


@dsl.component(**COMPONENT)
def check_classes(data: str, eval_data: str, preset: str = "default", settings: dict = {}) -> list:  # noqa: B006
    """The class names, every training and held-out image read first (bad input stops the run here)."""
    from pathlib import Path

    from dreamloom.usecases.augment import augment_settings, check_inputs

    classes, _ = check_inputs(Path(data), Path(eval_data), augment_settings(preset, settings))
    return sorted(classes)


@dsl.component(**COMPONENT)
def teach_class(
    data: str, class_name: str, preset: str = "default", settings: dict = {}, launcher: str = "local",  # noqa: B006
    gpus: str = "0",
) -> str:  # fmt: skip
    """Train, register and promote the class's adapter; returns its registered model's name.
    ``gpus``: this pod's GPUs, which the local launcher trains on."""
    import tempfile
    from pathlib import Path

    from dreamloom.usecases.augment import augment_settings, read_classes, teach_class

    options = augment_settings(preset, settings)
    if launcher == "local" and float(gpus):
        options = options.model_copy(update={"gpus_per_worker": float(gpus)})
    classes = read_classes(Path(data), options.min_real)
    index = sorted(classes).index(class_name)
    with tempfile.TemporaryDirectory() as work:
        return teach_class(class_name, classes[class_name], options, Path(work), index, launcher)


@dsl.component(**COMPONENT)
def synthesize_and_compare(
    data: str,
    eval_data: str,
    triton_url: str,
    dataset: Output[Dataset],
    metrics: Output[Metrics],
    page: Output[HTML],
    serving_store: str = "",
    preset: str = "default",
    settings: dict = {},  # noqa: B006
) -> NamedTuple("Compared", real_only_balanced_accuracy=float, augmented_balanced_accuracy=float):
    """Deploy every class's adapter, generate, write the augmented dataset, train the classifier on
    real and on real + synthetic images, and score both on the held-out images."""
    import html
    from collections import namedtuple
    from pathlib import Path

    from dreamloom.serving.repository import ServingStore
    from dreamloom.usecases.augment import augment_settings, synthesize_and_compare

    store = ServingStore(serving_store or None)
    report = synthesize_and_compare(
        Path(data), Path(eval_data), Path(dataset.path), triton_url, store, augment_settings(preset, settings)
    )
    rows = ""
    for variant, scores in (("real only", report.real_only), ("real + synthetic", report.augmented)):
        for name, value in vars(scores).items():
            metrics.log_metric(f"{variant.replace(' ', '_').replace('+', 'plus')}_{name}", value)
        cells = "".join(f"<td>{value}</td>" for value in (html.escape(variant), *vars(scores).values()))
        rows += f"<tr>{cells}</tr>"
    Path(page.path).write_text(
        "<h2>Augmentation</h2><table border='1'><tr><th>training data</th><th>balanced accuracy</th>"
        f"<th>balanced recall</th></tr>{rows}</table>"
    )
    compared = namedtuple("Compared", ["real_only_balanced_accuracy", "augmented_balanced_accuracy"])
    return compared(report.real_only.balanced_accuracy, report.augmented.balanced_accuracy)
