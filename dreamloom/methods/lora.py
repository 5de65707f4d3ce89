"""LoRA: low-rank matrices beside the UNet's attention projections (optionally the text encoders');
with ``lora.use_dora`` the update is weight-decomposed (DoRA: a learned magnitude per output and a
low-rank direction, Liu et al. 2024).

The artifact is the diffusers/peft LoRA file ``pytorch_lora_weights.safetensors`` with the
adapter configuration in its metadata, so ``pipe.load_lora_weights(folder)`` loads it as is. It
exports to kohya's layout (``lora_down``/``lora_up``/``alpha``, DoRA's magnitude as ``dora_scale``)
and imports any LoRA file diffusers' own kohya loader understands.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import Field
from safetensors import safe_open
from safetensors.torch import load_file

from dreamloom.errors import ArtifactError, DreamloomError
from dreamloom.methods import kohya
from dreamloom.methods.base import Suitability
from dreamloom.methods.peft_adapters import AdapterSettings, PeftAdapterMethod
from dreamloom.methods.peft_layers import component_modules
from dreamloom.models.base import LoadedBaseModel, pipeline_from_components

ADAPTER_NAME = "dreamloom"
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
MANY_CONCEPTS = 3
_DIFFUSERS_DOWN = (".lora.down.weight", ".lora_linear_layer.down.weight", ".lora_A.weight")
_DIFFUSERS_UP = (".lora.up.weight", ".lora_linear_layer.up.weight", ".lora_B.weight")
_MAGNITUDE = ".lora_magnitude_vector"


class LoraSettings(AdapterSettings):
    use_dora: bool = Field(
        False, description="DoRA: train a magnitude per output beside the low-rank direction (peft use_dora)"
    )


class LoraMethod(PeftAdapterMethod):
    name = "lora"
    summary = "peft LoRA on the UNet attention (optionally the text encoders; lora.use_dora for DoRA)"
    artifact_kind = "lora"
    artifact_files = (WEIGHT_NAME,)
    sections = {"lora": LoraSettings}
    section_name = "lora"
    settings_model = LoraSettings
    weights_file = WEIGHT_NAME
    peft_types = ("LORA",)
    kohya_parameters = ("lora_down.weight",)

    @classmethod
    def peft_config(cls, settings: LoraSettings, targets: list[str]):
        from peft import LoraConfig

        return LoraConfig(
            r=settings.rank,
            lora_alpha=settings.effective_alpha,
            lora_dropout=settings.dropout,
            init_lora_weights="gaussian",
            target_modules=targets,
            use_dora=settings.use_dora,
        )

    @classmethod
    def suitability(cls, needs) -> Suitability:
        if needs.concepts >= MANY_CONCEPTS:
            reason = f"{needs.concepts} concepts: LoRAs are small, hot-swappable and combinable on one base"
            return Suitability(0, [reason])
        return Suitability(0, ["a LoRA learns the concept quickly in a small artifact and combines with others"])

    def save_artifact(self, model: LoadedBaseModel, folder: Path) -> None:
        save_lora_modules(folder, component_modules(model, self.trains_text_encoder), model.is_sdxl)

    @classmethod
    def _load_weights(cls, pipe, folder: Path, name: str) -> None:
        pipe.load_lora_weights(str(folder), weight_name=WEIGHT_NAME, adapter_name=name)

    # ----- kohya / A1111 files -----

    @classmethod
    def export_kohya(cls, folder: Path, config, sdxl: bool):
        path = Path(folder) / WEIGHT_NAME
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as handle:
            adapter_metadata = json.loads((handle.metadata() or {}).get("lora_adapter_metadata", "{}"))
        converted: dict[str, torch.Tensor] = {}
        for key, tensor in tensors.items():
            component, module, direction = _split_diffusers_key(key)
            kohya_module = kohya.module_name(component, module, sdxl)
            if direction == "magnitude":  # kohya/LyCORIS keep DoRA's magnitude as a column (out, 1)
                converted[f"{kohya_module}.dora_scale"] = tensor.reshape(tensor.shape[0], 1)
                continue
            converted[f"{kohya_module}.lora_{direction}.weight"] = tensor
            if direction == "down":
                alpha = _alpha_for(adapter_metadata, component, module, rank=tensor.shape[0])
                converted[f"{kohya_module}.alpha"] = torch.tensor(float(alpha))
        return converted, kohya.file_metadata(sdxl, "lora")

    @classmethod
    def import_kohya(cls, tensors, metadata, model: LoadedBaseModel, staging: Path) -> None:
        """Through diffusers' own kohya loader, so that every layout diffusers understands is understood."""
        pipe = pipeline_from_components(model)
        try:
            pipe.load_lora_weights(_for_diffusers(tensors, model), adapter_name=ADAPTER_NAME)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise DreamloomError(f"not a LoRA for {model.ref.spec} that diffusers can load: {exc}") from None
        modules = {
            name: module
            for name, module in component_modules(pipe).items()
            if name == "unet" or ADAPTER_NAME in (getattr(module, "peft_config", None) or {})
        }
        save_lora_modules(staging, modules, model.is_sdxl, ADAPTER_NAME)


class DreamBoothLoraMethod(LoraMethod):
    """LoRA trained DreamBooth-style: a rare-token prompt plus prior preservation on class images."""

    name = "dreambooth-lora"
    summary = "LoRA, with prior preservation on class images"
    prior_by_default = True
    fallback = "pivotal"
    kohya_parameters = ()  # a kohya LoRA file imports as plain lora

    @classmethod
    def suitability(cls, needs):
        return None  # chosen when DreamBooth is over a budget, not first


def save_lora_modules(folder: Path, modules: dict, is_sdxl: bool, adapter_name: str = "default") -> None:
    """Save the LoRA layers of ``modules`` (keyed unet / text_encoder / text_encoder_2) with their
    adapter configs, in the file layout ``pipe.load_lora_weights`` reads."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers, metadata = {}, {}
    for name, module in modules.items():
        state = get_peft_model_state_dict(module, adapter_name=adapter_name)
        layers[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(state)
        metadata[f"{name}_lora_adapter_metadata"] = module.peft_config[adapter_name].to_dict()
    pipeline = StableDiffusionXLPipeline if is_sdxl else StableDiffusionPipeline
    pipeline.save_lora_weights(folder, weight_name=WEIGHT_NAME, safe_serialization=True, **layers, **metadata)


def _split_diffusers_key(key: str) -> tuple[str, str, str]:
    component, rest = key.split(".", 1)
    if rest.endswith(_MAGNITUDE):
        return component, rest[: -len(_MAGNITUDE)], "magnitude"
    for down, up in zip(_DIFFUSERS_DOWN, _DIFFUSERS_UP, strict=True):
        if rest.endswith(down):
            return component, rest[: -len(down)], "down"
        if rest.endswith(up):
            return component, rest[: -len(up)], "up"
    raise ArtifactError(f"unexpected tensor {key!r} in a LoRA file")


def _alpha_for(metadata: dict, component: str, module: str, rank: int) -> float:
    patterns = metadata.get(f"{component}.alpha_pattern") or {}
    for pattern, alpha in patterns.items():
        if module.endswith(pattern):
            return alpha
    return metadata.get(f"{component}.lora_alpha", rank)


def _for_diffusers(tensors: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """kohya names text-encoder modules ``text_model.encoder...``; transformers 5's CLIPTextModel has
    no ``text_model`` level, so those keys are renamed to match. DoRA magnitudes come as columns."""
    flat = not any(hasattr(encoder, "text_model") for encoder in model.text_encoders)
    renamed = {}
    for key, value in tensors.items():
        if key.endswith(".dora_scale"):
            value = value.reshape(-1)
        renamed[_drop_text_model_level(key) if flat else key] = value
    return renamed


def _drop_text_model_level(key: str) -> str:
    for prefix in ("lora_te_", "lora_te1_", "lora_te2_"):
        if key.startswith(prefix + "text_model_"):
            return prefix + key[len(prefix + "text_model_") :]
    return key
