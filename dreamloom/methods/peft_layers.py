"""peft tuner layers on a pipeline's components: which components a pipeline or loaded base has,
and taking adapters off them without leaving empty layers behind.

Adapters of different kinds on one served pipeline nest (a LoKr layer around a LoRA layer around
the base linear); each layer skips adapters that are not its own, so ``set_adapters`` mixes them
all by weight. Deleting an adapter leaves its layer in place, empty: ``remove_peft_adapters``
unwraps such layers, so that loading and evicting adapters in any order does not grow the nesting.
"""

from __future__ import annotations

import torch

from dreamloom.models.base import LoadedBaseModel


def component_modules(model_or_pipe, with_text_encoders: bool = True) -> dict[str, torch.nn.Module]:
    """``unet``, ``text_encoder``, ``text_encoder_2`` of a loaded base or a pipeline, as diffusers names them."""
    if isinstance(model_or_pipe, LoadedBaseModel):
        encoders = model_or_pipe.text_encoders
    else:
        encoders = [e for e in (model_or_pipe.text_encoder, getattr(model_or_pipe, "text_encoder_2", None)) if e]
    modules = {"unet": model_or_pipe.unet}
    if with_text_encoders:
        for index, encoder in enumerate(encoders):
            modules["text_encoder" if index == 0 else f"text_encoder_{index + 1}"] = encoder
    return modules


def remove_peft_adapters(pipe, names: list[str]) -> None:
    """Delete the adapters from the pipeline and unwrap the tuner layers they leave empty."""
    if not names:
        return
    pipe.delete_adapters(names)
    for module in component_modules(pipe).values():
        unwrap_empty_layers(module)


def unwrap_empty_layers(root: torch.nn.Module) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for parent in list(root.modules()):
        for child_name, child in list(parent.named_children()):
            layer = child
            while isinstance(layer, BaseTunerLayer) and _is_empty(layer):
                layer = layer.base_layer
            if layer is not child:
                setattr(parent, child_name, layer)


def _is_empty(layer) -> bool:
    return all(len(getattr(layer, name)) == 0 for name in layer.adapter_layer_names)
