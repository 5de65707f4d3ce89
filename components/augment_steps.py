"""The augmentation pipeline's steps: check the classes, teach one (in parallel over classes),
then deploy, generate and compare."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Metrics, Output

from components._image import COMPONENT


@dsl.component(**COMPONENT)
def check_classes(data: str, eval_data: str, preset: str = "default", settings: dict = {}) -> list:  # noqa: B006
    """Read every training and held-out image first, so that bad input stops the run here.

    Args:
        data: A folder of class subfolders of real training images.
        eval_data: A folder of held-out real images, by class, that both classifiers are scored on.
        preset: The experiment's starting settings: `default` (a real base) or `toy`.
        settings: Overrides of the preset's settings (see `dreamloom.usecases.augment.AugmentSettings`).

    Returns:
        Output: The class names, sorted.
    """
    from pathlib import Path

    from dreamloom.steps import run_step
    from dreamloom.usecases.augment import augment_settings, check_inputs

    def work():
        classes, _ = check_inputs(Path(data), Path(eval_data), augment_settings(preset, settings))
        return sorted(classes)

    return run_step(work, attempts=1)


@dsl.component(**COMPONENT)
def teach_class(
    data: str,
    class_name: str,
    preset: str = "default",
    settings: dict = {},  # noqa: B006 (KFP parameters are literals)
    launcher: str = "local",
    gpus: int = 0,
) -> str:
    """Train, register and promote one class's adapter.

    Args:
        data: A folder of class subfolders of real training images.
        class_name: The class to teach.
        preset: The experiment's starting settings: `default` or `toy`.
        settings: Overrides of the preset's settings.
        launcher: Where training runs: `local`, `ray` or `kuberay`.
        gpus: This pod's GPUs, which the local launcher trains on.

    Returns:
        Output: The class adapter's registered model name.
    """
    import tempfile
    from pathlib import Path

    from dreamloom.steps import run_step
    from dreamloom.usecases.augment import augment_settings, read_classes, teach_class

    def work():
        options = augment_settings(preset, settings)
        if launcher == "local" and gpus:
            options = options.model_copy(update={"gpus_per_worker": float(gpus)})
        classes = read_classes(Path(data), options.min_real)
        index = sorted(classes).index(class_name)
        with tempfile.TemporaryDirectory() as work:
            return teach_class(class_name, classes[class_name], options, Path(work), index, launcher)

    return run_step(work, attempts=1)


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
    """Deploy every class's adapter, generate synthetic images, and measure what they add.

    The same classifier trains on the real images and on real + synthetic ones; both are scored
    on the held-out real images.

    Args:
        data: A folder of class subfolders of real training images.
        eval_data: A folder of held-out real images, by class.
        triton_url: Triton's HTTP address, where the class adapters are deployed and called.
        serving_store: The serving store Triton reads; default the local work folder's.
        preset: The experiment's starting settings: `default` or `toy`.
        settings: Overrides of the preset's settings.

    Returns:
        dataset: The augmented dataset (real and synthetic images by class, with a manifest).
        metrics: Balanced accuracy and recall of both classifiers.
        page: The comparison as a table, for the KFP UI.
        real_only_balanced_accuracy: The classifier trained on real images only.
        augmented_balanced_accuracy: The classifier trained on real + synthetic images.
    """
    from collections import namedtuple
    from pathlib import Path

    from dreamloom.serving.repository import ServingStore
    from dreamloom.steps import run_step
    from dreamloom.usecases.augment import augment_settings, synthesize_and_compare

    def work():
        store = ServingStore(serving_store or None)
        report = synthesize_and_compare(
            Path(data), Path(eval_data), Path(dataset.path), triton_url, store, augment_settings(preset, settings)
        )
        for name, value in report.metrics().items():
            metrics.log_metric(name, value)
        Path(page.path).write_text(report.html())
        compared = namedtuple("Compared", ["real_only_balanced_accuracy", "augmented_balanced_accuracy"])
        return compared(report.real_only.balanced_accuracy, report.augmented.balanced_accuracy)

    return run_step(work, attempts=1)
