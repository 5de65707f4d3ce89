"""The ways to teach a concept, one module each, behind one registry."""

from __future__ import annotations

from dreamloom.errors import DreamloomError
from dreamloom.methods.base import TrainingMethod
from dreamloom.methods.controlnet import ControlNetMethod
from dreamloom.methods.dreambooth import DreamBoothMethod
from dreamloom.methods.hypernetwork import HypernetworkMethod
from dreamloom.methods.lora import DreamBoothLoraMethod, LoraMethod
from dreamloom.methods.pivotal import PivotalMethod
from dreamloom.methods.textual_inversion import TextualInversionMethod

METHODS: dict[str, type[TrainingMethod]] = {
    cls.name: cls
    for cls in (
        LoraMethod,
        DreamBoothMethod,
        DreamBoothLoraMethod,
        TextualInversionMethod,
        HypernetworkMethod,
        ControlNetMethod,
        PivotalMethod,
    )
}


def get_method(name: str) -> type[TrainingMethod]:
    try:
        return METHODS[name]
    except KeyError:
        raise DreamloomError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}") from None


__all__ = ["METHODS", "TrainingMethod", "get_method"]
