from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from components._image import COMPONENT


@dsl.component(**COMPONENT)
def prepare_data(config: dict, dataset: Output[Dataset]) -> NamedTuple("Prepared", images=int, dataset_hash=str):
    """Check the run config and every training image before any compute, and prepare the training set.

    Nothing is written when anything is wrong: one error lists every bad image and why.

    Args:
        config: The run config, as in a run YAML without `output` (method, base model, data, settings).

    Returns:
        dataset: The prepared training set (resized and cropped images, captions, conditions and a
            manifest with the originals' content hash); the train step reads it.
        images: How many images the prepared set holds.
        dataset_hash: The content hash of the original images, recorded as lineage.
    """
    from collections import namedtuple

    from dreamloom.config import pipeline_run_config
    from dreamloom.steps import run_step
    from dreamloom.training.job import training_data

    def work():
        run = pipeline_run_config(config, output=dataset.path)
        prepared = training_data(run, into=dataset.path)
        dataset.metadata.update({"images": len(prepared.items), "dataset_hash": prepared.dataset_hash})
        return namedtuple("Prepared", ["images", "dataset_hash"])(len(prepared.items), prepared.dataset_hash)

    return run_step(work, attempts=1)
