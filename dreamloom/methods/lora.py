"""LoRA: low-rank matrices beside the UNet's attention projections (optionally the text encoders').

The artifact is the diffusers/peft LoRA file ``pytorch_lora_weights.safetensors`` with the
adapter configuration in its metadata, so ``pipe.load_lora_weights(folder)`` loads it as is;
``dreamloom.methods.kohya`` converts to and from the kohya/A1111 key format.
"""

from __future__ import annotations

from pathlib import Path

from diffusers.training_utils import cast_training_params
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from dreamloom.methods.base import TrainingMethod
from dreamloom.models.base import LoadedBaseModel

ADAPTER_NAME = "dreamloom"
WEIGHT_NAME = "pytorch_lora_weights.safetensors"


class LoraMethod(TrainingMethod):
    name = "lora"
    artifact_kind = "lora"
    has_strength = True

    @property
    def trains_text_encoder(self) -> bool:
        return self.config.lora.train_text_encoder

    def attach(self, model: LoadedBaseModel) -> None:
        settings = self.config.lora
        model.unet.add_adapter(self._lora_config(settings.target_modules))
        if self.trains_text_encoder:
            for encoder in model.text_encoders:
                encoder.add_adapter(self._lora_config(settings.text_encoder_target_modules))
        cast_training_params(list(self.trained_modules(model).values()))

    def _lora_config(self, targets: list[str]) -> LoraConfig:
        settings = self.config.lora
        return LoraConfig(
            r=settings.rank,
            lora_alpha=settings.effective_alpha,
            lora_dropout=settings.dropout,
            init_lora_weights="gaussian",
            target_modules=targets,
        )

    def parameter_groups(self, model: LoadedBaseModel) -> list[dict]:
        groups = [{"params": [p for p in model.unet.parameters() if p.requires_grad]}]
        if self.trains_text_encoder:
            text_params = [p for te in model.text_encoders for p in te.parameters() if p.requires_grad]
            lr = self.config.lora.text_encoder_learning_rate or self.config.optimizer.learning_rate
            groups.append({"params": text_params, "lr": lr})
        return groups

    def save_artifact(self, model: LoadedBaseModel, folder: Path) -> None:
        modules = {"unet": model.unet}
        if self.trains_text_encoder:
            for index, encoder in enumerate(model.text_encoders):
                modules["text_encoder" if index == 0 else f"text_encoder_{index + 1}"] = encoder
        save_lora_modules(folder, modules, model.is_sdxl)

    @classmethod
    def load_into(cls, pipe, folder: Path, manifest=None, strength: float = 1.0):
        pipe.load_lora_weights(str(folder), weight_name=WEIGHT_NAME, adapter_name=ADAPTER_NAME)
        pipe.set_adapters([ADAPTER_NAME], adapter_weights=[strength])
        return pipe


class DreamBoothLoraMethod(LoraMethod):
    """LoRA trained DreamBooth-style: a rare-token prompt plus prior preservation on class images."""

    name = "dreambooth-lora"


def save_lora_modules(folder: Path, modules: dict, is_sdxl: bool, adapter_name: str = "default") -> None:
    """Save the LoRA layers of ``modules`` (keyed unet / text_encoder / text_encoder_2) with their
    adapter configs, in the file layout ``pipe.load_lora_weights`` reads."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    layers, metadata = {}, {}
    for name, module in modules.items():
        state = get_peft_model_state_dict(module, adapter_name=adapter_name)
        layers[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(state)
        metadata[f"{name}_lora_adapter_metadata"] = module.peft_config[adapter_name].to_dict()
    pipeline = StableDiffusionXLPipeline if is_sdxl else StableDiffusionPipeline
    pipeline.save_lora_weights(folder, weight_name=WEIGHT_NAME, safe_serialization=True, **layers, **metadata)
