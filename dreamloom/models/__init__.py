"""Base models: resolving ``--base-model``, loading components, the offline tiny builders."""

from dreamloom.models.base import (
    BaseModelRef,
    LoadedBaseModel,
    TextConditioning,
    load_base_model,
    pipeline_from_components,
    resolve_base_model,
)

__all__ = [
    "BaseModelRef",
    "LoadedBaseModel",
    "TextConditioning",
    "load_base_model",
    "pipeline_from_components",
    "resolve_base_model",
]
