"""LoHa (LyCORIS): the update of each adapted layer is the Hadamard product of two low-rank
products, ``dW = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / r``; at the same rank it can express a
rank up to r^2 where LoRA reaches r (Hyeon-Woo et al. 2022, as LyCORIS and kohya train it).

peft's ``LoHaConfig`` builds the layers. The artifact is ``loha_weights.safetensors`` (the peft
state dict and each component's peft config); it exports to the layout A1111, ComfyUI and kohya
read (``lora_unet_<module>.hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b``, ``alpha``) and
imports from it.
"""

from __future__ import annotations

from collections import Counter

import torch
from pydantic import Field

from dreamloom.errors import ArtifactError
from dreamloom.methods.peft_adapters import AdapterSettings, PeftAdapterMethod, exact_patterns

WEIGHTS_FILE = "loha_weights.safetensors"
FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
TUCKER = ("hada_t1", "hada_t2")  # convolutions with use_effective_conv2d


class LohaSettings(AdapterSettings):
    use_effective_conv2d: bool = Field(
        False, description="Convolution targets: a Tucker core per factor (LyCORIS's CP decomposition)"
    )


class LohaMethod(PeftAdapterMethod):
    name = "loha"
    summary = "LyCORIS LoHa: Hadamard products of low-rank pairs on the UNet attention (optionally text encoders)"
    artifact_kind = "loha"
    artifact_files = (WEIGHTS_FILE,)
    sections = {"loha": LohaSettings}
    section_name = "loha"
    settings_model = LohaSettings
    weights_file = WEIGHTS_FILE
    peft_types = ("LOHA",)
    kohya_parameters = ("hada_w1_a",)

    @classmethod
    def peft_config(cls, settings: LohaSettings, targets: list[str]):
        from peft import LoHaConfig

        return LoHaConfig(
            r=settings.rank,
            alpha=settings.effective_alpha,
            module_dropout=settings.dropout,
            target_modules=targets,
            use_effective_conv2d=settings.use_effective_conv2d,
        )

    @classmethod
    def from_kohya(cls, layers: dict[str, dict[str, torch.Tensor]], component: torch.nn.Module):
        from peft import LoHaConfig

        ranks, alphas, state, tucker = {}, {}, {}, False
        for module, tensors in layers.items():
            unknown = set(tensors) - {*FACTORS, *TUCKER, "alpha"}
            missing = set(FACTORS) - set(tensors)
            if unknown or missing:
                raise ArtifactError(
                    f"LoHa module {module} has tensors {sorted(tensors)}; expected {', '.join(FACTORS)} and alpha"
                )
            tucker = tucker or any(name in tensors for name in TUCKER)
            ranks[module] = int(tensors["hada_w1_b"].shape[0])
            # kohya and ComfyUI scale by alpha / rank, and by 1 when a file has no alpha.
            alphas[module] = float(tensors["alpha"]) if "alpha" in tensors else float(ranks[module])
            state.update({f"{module}.{name}": value for name, value in tensors.items() if name != "alpha"})
        rank = Counter(ranks.values()).most_common(1)[0][0]
        config = LoHaConfig(
            r=rank,
            alpha=rank,
            target_modules=sorted(layers),
            rank_pattern=exact_patterns(ranks),
            alpha_pattern=exact_patterns(alphas),
            use_effective_conv2d=tucker,
        )
        return config, state
