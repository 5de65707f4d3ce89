"""Logged with every registered version ("models from code"): MLflow runs this file to build the model."""

import mlflow

from dreamloom.registry.pyfunc import DreamloomImageModel

mlflow.models.set_model(DreamloomImageModel())
