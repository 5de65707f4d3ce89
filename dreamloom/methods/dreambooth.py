"""DreamBooth: the whole UNet trains, usually with prior preservation on class images.

The artifact is a diffusers UNet folder (``unet/``, safetensors) that replaces the base's UNet, so
it is served as its own model rather than as an adapter of a shared base.
"""

from __future__ import annotations

from pathlib import Path

from dreamloom.methods.base import Suitability, TrainingMethod, check_same_architecture
from dreamloom.models.base import LoadedBaseModel

UNET_FOLDER = "unet"


class DreamBoothMethod(TrainingMethod):
    name = "dreambooth"
    summary = "the whole UNet, with prior preservation"
    artifact_kind = "unet"
    artifact_files = (f"{UNET_FOLDER}/",)
    prior_by_default = True
    trains_base_weights = True
    serves_as_model = True
    fallback = "dreambooth-lora"

    @classmethod
    def trainable_params(cls, arch, config) -> int:
        return arch.unet_params

    @classmethod
    def suitability(cls, needs) -> Suitability | None:
        if needs.new_to_base and needs.fine_detail and needs.concepts == 1:
            return Suitability(
                80,
                [
                    "a concept new to the base that needs fine detail: "
                    "DreamBooth's full UNet gives the highest fidelity",
                    "prior preservation keeps the base's idea of the class",
                ],
            )
        return None

    def attach(self, model: LoadedBaseModel) -> None:
        model.unet.requires_grad_(True)

    def parameter_groups(self, model: LoadedBaseModel) -> list[dict]:
        return [{"params": list(model.unet.parameters())}]

    def save_artifact(self, model: LoadedBaseModel, folder: Path) -> None:
        model.unet.save_pretrained(folder / UNET_FOLDER, safe_serialization=True)

    @classmethod
    def check_fit(cls, folder: Path, arch, config=None) -> None:
        check_same_architecture(Path(folder) / UNET_FOLDER / "config.json", arch.unet_config, cls.name, arch.name)
        super().check_fit(folder, arch, config)

    @classmethod
    def load_into(cls, pipe, folder: Path, config=None, strength: float = 1.0):
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(
            Path(folder) / UNET_FOLDER, torch_dtype=pipe.unet.dtype, use_safetensors=True
        )
        pipe.unet = unet.to(pipe.device)
        return pipe
