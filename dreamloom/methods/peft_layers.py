"""peft tuner layers on a pipeline's components: which components a pipeline or loaded base has,
and taking adapters off them without leaving empty layers behind.

Adapters of different kinds on one served pipeline nest (a LoKr layer around a LoRA layer around
the base linear); each layer skips adapters that are not its own, so ``set_adapters`` mixes them
all by weight. Deleting an adapter leaves its layer in place, empty: ``remove_peft_adapters``
unwraps such layers, so that loading and evicting adapters in any order does not grow the nesting.

``per_sample_adapters`` lets one batch mix adapters: each sample gets its own adapters and weights
while the base layer runs once for the whole batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial

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


# (peft adapter name, weight) pairs, in the order a request named them: what one sample applies.
SampleAdapters = tuple[tuple[str, float], ...]


@contextlib.contextmanager
def per_sample_adapters(pipe, samples: list[SampleAdapters]) -> Iterator[None]:
    """While active, every peft tuner layer of the pipeline's UNet and text encoders gives sample
    ``i`` of a batch the base layer's output plus the deltas of ``samples[i]``'s adapters at their
    weights, whatever adapters peft has active. The base layer runs once on the whole batch; each
    distinct set of adapters adds its deltas to its own rows, with peft's own arithmetic (LoRA,
    DoRA, LoHa, LoKr), so a sample comes out as it would alone, up to float rounding.

    A layer called on ``k * len(samples)`` rows (classifier-free guidance stacks the unconditional
    and the conditional batch) maps row ``r`` to sample ``r % len(samples)``.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    groups: dict[SampleAdapters, list[int]] = {}
    for index, adapters in enumerate(samples):
        groups.setdefault(tuple(adapters), []).append(index)
    layers = [
        module
        for component in component_modules(pipe).values()
        for module in component.modules()
        if isinstance(module, BaseTunerLayer)
    ]
    for layer in layers:
        layer.forward = partial(_per_sample_forward, layer, groups, len(samples))
    try:
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)


def _per_sample_forward(layer, groups: dict, count: int, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    result = layer.base_layer(x, *args, **kwargs)
    copies, remainder = divmod(x.shape[0], count)
    if remainder or not copies:
        raise ValueError(f"a batch of {x.shape[0]} rows reached an adapter layer set up for {count} samples")
    for adapters, samples in groups.items():
        own = [(name, weight) for name, weight in adapters if _holds(layer, name)]
        if not own:
            continue
        if len(samples) == count:  # every row: no gather, no scatter
            result = _add_deltas(layer, own, x, result, *args, **kwargs)
            continue
        rows = torch.tensor([sample + copy * count for copy in range(copies) for sample in samples], device=x.device)
        result[rows] = _add_deltas(layer, own, x[rows], result[rows], *args, **kwargs).to(result.dtype)
    return result


def _holds(layer, name: str) -> bool:
    from peft.tuners.lora import LoraLayer

    if isinstance(layer, LoraLayer):
        return name in layer.lora_A
    return name in getattr(layer, "_available_adapters", ())


def _add_deltas(layer, adapters: list[tuple[str, float]], x: torch.Tensor, result: torch.Tensor, *args, **kwargs):
    """``result`` plus each adapter's delta at its weight, computed as peft's own forward does."""
    from peft.tuners.lora import LoraLayer

    dtype = result.dtype
    for name, weight in adapters:
        unit = layer.scaling[name]
        layer.set_scale(name, weight)  # the adapter's own alpha / rank, times the request's weight
        try:
            if isinstance(layer, LoraLayer):
                inputs = layer._cast_input_dtype(x, layer.lora_A[name].weight.dtype)
                if name in layer.lora_variant:  # DoRA: its magnitude rescales the base output too
                    result = layer.lora_variant[name].forward(layer, active_adapter=name, x=inputs, result=result)
                else:
                    path = layer.lora_B[name](layer.lora_A[name](layer.lora_dropout[name](inputs)))
                    result = result + path * layer.scaling[name]
            else:  # LyCORIS kinds (LoHa, LoKr): the delta weight applied to the input
                result = result + layer._get_delta_activations(name, x, *args, **kwargs)
        finally:
            layer.scaling[name] = unit
    return result.to(dtype)
