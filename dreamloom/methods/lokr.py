"""LoKr (LyCORIS): the update of each adapted layer is a Kronecker product, ``dW = w1 (x) w2``, of a
small matrix and a (possibly low-rank) larger one: the smallest artifacts of the LoRA family at a
given expressiveness (Yeh et al. 2023, as LyCORIS and kohya train it).

peft's ``LoKrConfig`` builds the layers: each side of the weight is factorised (``decompose_factor``,
-1 for near-square factors), ``w2`` is low-rank (``w2_a @ w2_b``) when the rank is below half its
size, and ``w1`` too with ``decompose_both``. The artifact is ``lokr_weights.safetensors``; it
exports to the layout A1111, ComfyUI and kohya read (``lora_unet_<module>.lokr_w1`` or
``lokr_w1_a``/``lokr_w1_b``, ``lokr_w2`` or ``lokr_w2_a``/``lokr_w2_b``, ``alpha``) and imports from it.

Those readers scale a module by ``alpha / rank`` only when one of its factors is low-rank, and by 1
when both are full matrices (alpha is then ignored); peft always scales by ``alpha / r``. The export
folds peft's scale into ``lokr_w1`` for such modules, and the import gives them a scale of 1, so a
file means the same here as there.
"""

from __future__ import annotations

import json
from collections import Counter

import torch
from pydantic import Field

from dreamloom.errors import ArtifactError
from dreamloom.methods.peft_adapters import AdapterSettings, PeftAdapterMethod, exact_patterns

WEIGHTS_FILE = "lokr_weights.safetensors"
W1, W1_LOW = ("lokr_w1",), ("lokr_w1_a", "lokr_w1_b")
W2, W2_LOW = ("lokr_w2",), ("lokr_w2_a", "lokr_w2_b")
TUCKER = "lokr_t2"


class LokrSettings(AdapterSettings):
    decompose_both: bool = Field(False, description="Make w1 low-rank too (LyCORIS's decompose_both)")
    decompose_factor: int = Field(
        -1, ge=-1, description="Factor of each side's factorisation; -1 for near-square factors (LyCORIS's factor)"
    )
    use_effective_conv2d: bool = Field(
        False, description="Convolution targets: a Tucker core for w2 (LyCORIS's CP decomposition)"
    )


class LokrMethod(PeftAdapterMethod):
    name = "lokr"
    summary = "LyCORIS LoKr: Kronecker products of a small and a low-rank matrix on the UNet attention"
    artifact_kind = "lokr"
    artifact_files = (WEIGHTS_FILE,)
    sections = {"lokr": LokrSettings}
    section_name = "lokr"
    settings_model = LokrSettings
    weights_file = WEIGHTS_FILE
    peft_types = ("LOKR",)
    kohya_parameters = ("lokr_w1", "lokr_w1_a")

    @classmethod
    def peft_config(cls, settings: LokrSettings, targets: list[str]):
        from peft import LoKrConfig

        return LoKrConfig(
            r=settings.rank,
            alpha=settings.effective_alpha,
            module_dropout=settings.dropout,
            target_modules=targets,
            decompose_both=settings.decompose_both,
            decompose_factor=settings.decompose_factor,
            use_effective_conv2d=settings.use_effective_conv2d,
        )

    @classmethod
    def to_kohya(cls, parameters: dict[str, torch.Tensor], rank: int, alpha: float) -> dict[str, torch.Tensor]:
        if "lokr_w1" in parameters and "lokr_w2" in parameters:  # read with a scale of 1
            parameters = {**parameters, "lokr_w1": parameters["lokr_w1"] * (alpha / rank)}
            alpha = rank
        return {**parameters, "alpha": torch.tensor(float(alpha))}

    @classmethod
    def export_kohya(cls, folder, config, sdxl: bool):
        tensors, metadata = super().export_kohya(folder, config, sdxl)
        factor = _decompose_factor(folder, cls)
        metadata["ss_network_args"] = json.dumps({"algo": "lokr", "factor": factor})
        return tensors, metadata

    @classmethod
    def from_kohya(cls, layers: dict[str, dict[str, torch.Tensor]], component: torch.nn.Module):
        from peft import LoKrConfig

        modules = dict(component.named_modules())
        ranks, alphas, state, both = {}, {}, {}, set()
        for path, tensors in layers.items():
            known = {*W1, *W1_LOW, *W2, *W2_LOW, TUCKER, "alpha"}
            if set(tensors) - known or not (_has(tensors, W1) or _has(tensors, W1_LOW)):
                raise ArtifactError(f"LoKr module {path} has tensors {sorted(tensors)}, which LoKr does not write")
            rank, low_rank = _rank(tensors)
            ranks[path] = rank
            # A module whose factors are both full is read with a scale of 1 (alpha ignored).
            alphas[path] = float(tensors["alpha"]) if "alpha" in tensors and low_rank else float(rank)
            both.add(_has(tensors, W1_LOW))
            state.update({f"{path}.{name}": value for name, value in tensors.items() if name != "alpha"})
        if len(both) > 1:
            raise ArtifactError("the file makes w1 low-rank in some modules and not in others; peft cannot rebuild it")
        factor = _factor_for(layers, modules)
        rank = Counter(ranks.values()).most_common(1)[0][0]
        config = LoKrConfig(
            r=rank,
            alpha=rank,
            target_modules=sorted(layers),
            rank_pattern=exact_patterns(ranks),
            alpha_pattern=exact_patterns(alphas),
            decompose_both=both.pop(),
            decompose_factor=factor,
            use_effective_conv2d=any(TUCKER in tensors for tensors in layers.values()),
        )
        return config, state


def _has(tensors: dict, names: tuple[str, ...]) -> bool:
    return all(name in tensors for name in names)


def _rank(tensors: dict[str, torch.Tensor]) -> tuple[int, bool]:
    """The module's rank and whether a factor is low-rank. With both factors full, any rank at least
    half of w2's larger side makes peft build them full; w2's larger side is one."""
    if _has(tensors, W2_LOW):
        return int(tensors["lokr_w2_b"].shape[0]), True
    if _has(tensors, W1_LOW):
        return int(tensors["lokr_w1_b"].shape[0]), True
    return int(max(tensors["lokr_w2"].shape[:2])), False


def _factor_for(layers: dict[str, dict[str, torch.Tensor]], modules: dict[str, torch.nn.Module]) -> int:
    """The decompose_factor under which peft's factorisation gives every module the file's w1 shape."""
    from peft.tuners.lokr.layer import factorization

    shapes = {}
    for path, tensors in layers.items():
        w1 = tensors["lokr_w1"] if "lokr_w1" in tensors else tensors["lokr_w1_a"] @ tensors["lokr_w1_b"]
        shapes[path] = tuple(w1.shape)
    candidates = [-1, *sorted({side for shape in shapes.values() for side in shape})]
    for factor in candidates:
        if all(_w1_shape(modules[path], factor, factorization) == shape for path, shape in shapes.items()):
            return factor
    raise ArtifactError("the file's Kronecker factors match no factorisation peft can rebuild")


def _w1_shape(module: torch.nn.Module, factor: int, factorization) -> tuple[int, int]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    layer = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
    if isinstance(layer, torch.nn.Linear):
        out_dim, in_dim = layer.out_features, layer.in_features
    elif isinstance(layer, torch.nn.Conv2d):
        out_dim, in_dim = layer.out_channels, layer.in_channels // layer.groups
    else:
        raise ArtifactError(f"LoKr adapts linear and convolution layers, not {type(layer).__name__}")
    return factorization(out_dim, factor)[0], factorization(in_dim, factor)[0]


def _decompose_factor(folder, method) -> int:
    from dreamloom.methods.peft_adapters import read_peft_file

    _, configs = read_peft_file(folder / method.weights_file, method.peft_types)
    return int(next(iter(configs.values())).decompose_factor)
