"""The ways to teach a concept, one module each, behind one registry.

Adding a method is a module here that subclasses ``TrainingMethod`` (or ``PeftAdapterMethod`` for
a peft adapter) and one line in ``METHODS``: the run config, the CLI, serving, sizing, the
advisor, evaluation and deploys ask the registry and the method, never a method's name.
"""

from __future__ import annotations

from dreamloom.errors import DreamloomError
from dreamloom.methods.base import TrainingMethod
from dreamloom.methods.controlnet import ControlNetMethod
from dreamloom.methods.dreambooth import DreamBoothMethod
from dreamloom.methods.hypernetwork import HypernetworkMethod
from dreamloom.methods.loha import LohaMethod
from dreamloom.methods.lokr import LokrMethod
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
        LohaMethod,
        LokrMethod,
    )
}


def get_method(name: str) -> type[TrainingMethod]:
    try:
        return METHODS[name]
    except KeyError:
        raise DreamloomError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}") from None


def config_sections() -> dict[str, type]:
    """Every method's config sections, each once (methods may share one)."""
    sections: dict[str, type] = {}
    for method in METHODS.values():
        for name, model in method.sections.items():
            if sections.setdefault(name, model) is not model:
                raise TypeError(f"config section {name!r} is defined by two methods with different models")
    return sections


def kohya_reader(keys: set[str]) -> type[TrainingMethod]:
    """The method whose weights a kohya-format file with these tensor names holds."""
    readers = [method for method in METHODS.values() if method.reads_kohya(keys)]
    if len(readers) != 1:
        kinds = ", ".join(method.name for method in readers) or "none known here"
        raise DreamloomError(f"cannot tell which kind of adapter the file holds ({kinds}); is it a kohya/A1111 file?")
    return readers[0]


__all__ = ["METHODS", "TrainingMethod", "config_sections", "get_method", "kohya_reader"]
