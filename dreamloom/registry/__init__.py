"""The model registry (MLflow): versions with lineage and metrics, the promotion gate, rollback."""

from dreamloom.registry.gate import GateConfig
from dreamloom.registry.store import (
    CHALLENGER,
    CHAMPION,
    Evaluation,
    Promotion,
    attach_evaluation,
    download_artifact,
    evaluated,
    judge,
    list_versions,
    promote,
    register,
    resolve,
    rollback,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "Evaluation",
    "GateConfig",
    "Promotion",
    "attach_evaluation",
    "download_artifact",
    "evaluated",
    "judge",
    "list_versions",
    "promote",
    "register",
    "resolve",
    "rollback",
]
