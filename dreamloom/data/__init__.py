"""Training data: validating and preparing image folders, and feeding them to the loop."""

from dreamloom.data.prepare import (
    PreparedDataset,
    PrepareOptions,
    dataset_hash,
    prepare_dataset,
    prepare_training_data,
)

__all__ = ["PrepareOptions", "PreparedDataset", "dataset_hash", "prepare_dataset", "prepare_training_data"]
