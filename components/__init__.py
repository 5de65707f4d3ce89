"""Kubeflow Pipelines components: one per step of personalization, each a thin typed wrapper
over the dreamloom library (imports inside the function, as KFP runs the function's source in the
dreamloom image). Call ``component.python_func(...)`` to run one directly."""

from components.augment_steps import check_classes, synthesize_and_compare, teach_class
from components.deploy import deploy
from components.evaluate import evaluate
from components.gate import gate
from components.prepare_data import prepare_data
from components.promote import promote
from components.register import register
from components.render_ads import render_ads
from components.train import train

__all__ = [
    "check_classes",
    "deploy",
    "evaluate",
    "gate",
    "prepare_data",
    "promote",
    "register",
    "render_ads",
    "synthesize_and_compare",
    "teach_class",
    "train",
]
