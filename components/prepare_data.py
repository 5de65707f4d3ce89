from kfp import dsl
from kfp.dsl import Dataset, Output

from components._image import COMPONENT


@dsl.component(**COMPONENT)
def prepare_data(config: dict, dataset: Output[Dataset]) -> str:
    """Validate the run config and every image before any compute; prepare the dataset.
    Returns the dataset's content hash (the training run records it as lineage)."""
    import json

    from dreamloom.config import pipeline_run_config
    from dreamloom.data.prepare import prepare_training_data

    run = pipeline_run_config(config, output=dataset.path)
    prepared = prepare_training_data(run.data, run.method_type.condition(run))
    dataset.metadata.update({"images": len(prepared.items), "hash": prepared.dataset_hash})
    with open(dataset.path, "w") as handle:
        json.dump({"root": str(prepared.root), "hash": prepared.dataset_hash, "images": len(prepared.items)}, handle)
    return prepared.dataset_hash
