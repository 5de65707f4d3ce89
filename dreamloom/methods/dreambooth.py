"""DreamBooth: the whole UNet trains, usually with prior preservation on class images; with
``dreambooth.train_text_encoder`` the text encoder(s) train in full beside it, as diffusers'
``train_dreambooth.py --train_text_encoder`` and kohya's DreamBooth do.

The artifact is a diffusers UNet folder (``unet/``, safetensors) that replaces the base's UNet,
and, when the text encoders trained, their folders (``text_encoder/``, SDXL's ``text_encoder_2/``)
that replace the base's; it is served as its own model rather than as an adapter of a shared base.
In plain diffusers: ``UNet2DConditionModel.from_pretrained(artifact / "unet")`` and
``CLIPTextModel.from_pretrained(artifact / "text_encoder")`` passed to the base's pipeline.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from dreamloom.errors import ArtifactError
from dreamloom.methods.base import Suitability, TrainingMethod, check_same_architecture, section
from dreamloom.models.base import LoadedBaseModel
from dreamloom.schema import Section

UNET_FOLDER = "unet"
TEXT_ENCODER_FOLDERS = ("text_encoder", "text_encoder_2")  # the pipeline's attribute names too
# What makes a saved text encoder fit a base's (its dtype and library version may differ).
_TEXT_ENCODER_SHAPE = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
    "max_position_embeddings",
    "projection_dim",
)


class DreamBoothSettings(Section):
    train_text_encoder: bool = Field(
        False,
        description="Also train the text encoder(s) in full: the identifier's words can then move away from "
        "what the base means by them (their colour, their shape); costs the encoders' weights in the artifact",
    )
    text_encoder_learning_rate: float | None = Field(
        None, gt=0, le=1, description="Learning rate of the text encoder(s) (default: optimizer.learning_rate)"
    )


class DreamBoothMethod(TrainingMethod):
    name = "dreambooth"
    summary = "the whole UNet (dreambooth.train_text_encoder: the text encoders too), with prior preservation"
    artifact_kind = "unet"
    artifact_files = (f"{UNET_FOLDER}/",)
    sections = {"dreambooth": DreamBoothSettings}
    prior_by_default = True
    trains_base_weights = True
    serves_as_model = True
    fallback = "dreambooth-lora"

    @classmethod
    def settings_of(cls, config) -> DreamBoothSettings:
        return section(config, "dreambooth", DreamBoothSettings)

    @classmethod
    def trains_text_encoders(cls, config) -> bool:
        return cls.settings_of(config).train_text_encoder

    @classmethod
    def trainable_params(cls, arch, config) -> int:
        text = sum(arch.text_encoder_params) if cls.trains_text_encoders(config) else 0
        return arch.unet_params + text

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
        if self.trains_text_encoder:
            for encoder in model.text_encoders:
                encoder.requires_grad_(True)

    def parameter_groups(self, model: LoadedBaseModel) -> list[dict]:
        groups = [{"params": list(model.unet.parameters())}]
        if self.trains_text_encoder:
            settings = self.settings_of(self.config)
            lr = settings.text_encoder_learning_rate or self.config.optimizer.learning_rate
            groups.append({"params": [p for encoder in model.text_encoders for p in encoder.parameters()], "lr": lr})
        return groups

    def save_artifact(self, model: LoadedBaseModel, folder: Path) -> None:
        model.unet.save_pretrained(folder / UNET_FOLDER, safe_serialization=True)
        if self.trains_text_encoder:
            for encoder, name in zip(model.text_encoders, TEXT_ENCODER_FOLDERS, strict=False):
                encoder.save_pretrained(folder / name, safe_serialization=True)

    @classmethod
    def check_fit(cls, folder: Path, arch, config=None) -> None:
        folder = Path(folder)
        check_same_architecture(folder / UNET_FOLDER / "config.json", arch.unet_config, cls.name, arch.name)
        present = [name for name in TEXT_ENCODER_FOLDERS if (folder / name).exists()]
        expected = list(TEXT_ENCODER_FOLDERS[: len(arch.text_configs)])
        for name in present:
            if name not in expected:
                raise ArtifactError(f"the {cls.name} artifact holds {name}/, which {arch.name} does not have")
            base_config = arch.text_configs[expected.index(name)]
            check_same_architecture(
                folder / name / "config.json", base_config, cls.name, arch.name, _TEXT_ENCODER_SHAPE
            )
        missing = [name for name in expected if name not in present]
        if cls.trains_text_encoders(config) and missing:
            raise ArtifactError(
                f"the {cls.name} artifact trained its text encoders but holds {present or 'none'} "
                f"of {expected}: it is not complete"
            )
        super().check_fit(folder, arch, config)

    @classmethod
    def load_into(cls, pipe, folder: Path, config=None, strength: float = 1.0):
        from diffusers import UNet2DConditionModel

        folder = Path(folder)
        unet = UNet2DConditionModel.from_pretrained(
            folder / UNET_FOLDER, torch_dtype=pipe.unet.dtype, use_safetensors=True
        )
        pipe.unet = unet.to(pipe.device)
        for name in TEXT_ENCODER_FOLDERS:
            base_encoder = getattr(pipe, name, None)
            if base_encoder is not None and (folder / name).is_dir():
                encoder = type(base_encoder).from_pretrained(
                    folder / name, torch_dtype=base_encoder.dtype, use_safetensors=True
                )
                setattr(pipe, name, encoder.to(pipe.device))
        return pipe
