"""Pivotal tuning: a new token embedding and a LoRA trained together.

The embedding gives the concept a handle in the text space; the LoRA carries the detail the
embedding cannot. With ``textual_inversion.train_fraction`` below 1 the embedding trains for the
first part of the run and is then held still while the LoRA continues. The artifact holds the
LoRA file and the embedding file; ``load_into`` puts both into a pipeline in one call.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dreamloom.methods.base import ServedAdapter, Suitability, TrainingMethod
from dreamloom.methods.lora import LoraMethod
from dreamloom.methods.textual_inversion import TextualInversionMethod
from dreamloom.models.base import LoadedBaseModel


class PivotalMethod(TrainingMethod):
    name = "pivotal"
    summary = "a new token embedding and a LoRA together (textual_inversion.train_fraction)"
    artifact_kind = "lora+embedding"
    artifact_files = LoraMethod.artifact_files + TextualInversionMethod.artifact_files
    sections = {**LoraMethod.sections, **TextualInversionMethod.sections}
    flags = TextualInversionMethod.flags
    has_strength = True  # the LoRA's scale
    fallback = "textual-inversion"

    def __init__(self, config):
        super().__init__(config)
        self.embedding = TextualInversionMethod(config)
        self.lora = LoraMethod(config)

    @classmethod
    def placeholder(cls, config) -> str:
        return TextualInversionMethod.placeholder(config)

    @classmethod
    def check(cls, config, base, dataset) -> None:
        TextualInversionMethod.check(config, base, dataset)

    @classmethod
    def trains_text_encoders(cls, config) -> bool:
        return True

    @classmethod
    def trainable_params(cls, arch, config) -> int:
        return LoraMethod.trainable_params(arch, config) + TextualInversionMethod.trainable_params(arch, config)

    @classmethod
    def evaluation_kind(cls, config):
        return TextualInversionMethod.evaluation_kind(config)

    @classmethod
    def suitability(cls, needs) -> Suitability | None:
        if needs.new_to_base and needs.fine_detail and needs.concepts > 1:
            return Suitability(
                80,
                [
                    f"{needs.concepts} new concepts needing detail: a full UNet each would not scale",
                    "pivotal tuning gives each concept a new token (reach) and a LoRA (detail) at LoRA sizes",
                ],
            )
        return None

    def captions_for(self, caption: str | None) -> list[str]:
        return self.embedding.captions_for(caption)

    def attach(self, model: LoadedBaseModel) -> None:
        self.embedding.attach(model)
        self.lora.attach(model)

    def trained_modules(self, model: LoadedBaseModel) -> dict[str, torch.nn.Module]:
        return {"unet": model.unet, **self.embedding.trained_modules(model)}

    def parameter_groups(self, model: LoadedBaseModel) -> list[dict]:
        return self.lora.parameter_groups(model) + self.embedding.parameter_groups(model)

    def before_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        # The embedding group is the last one; past its share of the run it stops moving.
        last_embedding_step = self.config.textual_inversion.train_fraction * self.config.training.steps
        if step > last_embedding_step:
            optimizer.param_groups[-1]["lr"] = 0.0

    def save_artifact(self, model: LoadedBaseModel, folder: Path) -> None:
        self.lora.save_artifact(model, folder)
        self.embedding.save_artifact(model, folder)

    @classmethod
    def check_fit(cls, folder: Path, arch, config=None) -> None:
        TextualInversionMethod.check_fit(folder, arch, config)
        LoraMethod.check_fit(folder, arch, config)

    @classmethod
    def load_into(cls, pipe, folder: Path, config=None, strength: float = 1.0):
        pipe = TextualInversionMethod.load_into(pipe, folder, config)
        return LoraMethod.load_into(pipe, folder, config, strength)

    @classmethod
    def serve(cls, pipe, folder: Path, config, key: str) -> ServedAdapter:
        lora = LoraMethod.serve(pipe, folder, config, key)
        embedding = TextualInversionMethod.serve(pipe, folder, config, key)
        return ServedAdapter(
            key, cls.name, peft_adapters=lora.peft_adapters, placeholder=embedding.placeholder, tokens=embedding.tokens
        )
