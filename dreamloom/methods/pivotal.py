"""Pivotal tuning: a new token embedding and a LoRA trained together.

The embedding gives the concept a handle in the text space; the LoRA carries the detail the
embedding cannot. With ``textual_inversion.train_fraction`` below 1 the embedding trains for the
first part of the run and is then held still while the LoRA continues. The artifact holds the
LoRA file and the embedding file; ``load_into`` puts both into a pipeline in one call.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dreamloom.methods.base import TrainingMethod
from dreamloom.methods.lora import LoraMethod
from dreamloom.methods.textual_inversion import TextualInversionMethod
from dreamloom.models.base import LoadedBaseModel


class PivotalMethod(TrainingMethod):
    name = "pivotal"
    artifact_kind = "lora+embedding"
    has_strength = True  # the LoRA's scale

    def __init__(self, config):
        super().__init__(config)
        self.embedding = TextualInversionMethod(config)
        self.lora = LoraMethod(config)

    @classmethod
    def check(cls, config, base, dataset) -> None:
        TextualInversionMethod.check(config, base, dataset)

    @property
    def trains_text_encoder(self) -> bool:
        return True

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
    def load_into(cls, pipe, folder: Path, manifest, strength: float = 1.0):
        pipe = TextualInversionMethod.load_into(pipe, folder, manifest)
        return LoraMethod.load_into(pipe, folder, manifest, strength)
