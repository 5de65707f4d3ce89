"""Kubeflow Pipelines components: one per step of personalization, each a thin typed wrapper
over the dreamloom library (imports inside the function, as KFP runs the function's source in the
dreamloom image). Call ``component.python_func(...)`` to run one directly."""

from components.deploy import deploy
from components.evaluate import evaluate
from components.gate import gate
from components.prepare_data import prepare_data
from components.promote import promote
from components.register import register
from components.train import train

__all__ = ["deploy", "evaluate", "gate", "prepare_data", "promote", "register", "train"]
