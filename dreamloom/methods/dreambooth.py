"""DreamBooth: the whole UNet trains, usually with prior preservation on class images.

The artifact is a diffusers UNet folder (``unet/``, safetensors) that replaces the base's UNet.
"""

from __future__ import annotations

from pathlib import Path

from dreamloom.methods.base import TrainingMethod
from dreamloom.models.base import LoadedBaseModel

UNET_FOLDER = "unet"


class DreamBoothMethod(TrainingMethod):
    name = "dreambooth"
    artifact_kind = "unet"

    def attach(self, model: LoadedBaseModel) -> None:
        model.unet.requires_grad_(True)

    def parameter_groups(self, model: LoadedBaseModel) -> list[dict]:
        return [{"params": list(model.unet.parameters())}]

    def save_artifact(self, model: LoadedBaseModel, folder: Path) -> None:
        model.unet.save_pretrained(folder / UNET_FOLDER, safe_serialization=True)

    @classmethod
    def load_into(cls, pipe, folder: Path, manifest=None, strength: float = 1.0):
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(
            folder / UNET_FOLDER, torch_dtype=pipe.unet.dtype, use_safetensors=True
        )
        pipe.unet = unet.to(pipe.device)
        return pipe
