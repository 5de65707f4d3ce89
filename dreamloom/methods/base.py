"""What a method is: a plug-in to the one training loop.

A method says what to make trainable, which module predicts the noise (the "denoiser": the UNet,
or the UNet with a ControlNet or a hypernetwork around it), which captions an example trains
with, and how its artifact is saved and put into a pipeline. The loop owns everything else
(data, Ray, checkpoints, precision, logging, progress, sample grids).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from dreamloom.config import RunConfig
from dreamloom.models.base import BaseModelRef, LoadedBaseModel, pipeline_from_components

if TYPE_CHECKING:
    from dreamloom.artifacts import ArtifactManifest
    from dreamloom.data.prepare import PreparedDataset
    from dreamloom.training.examples import Batch, ExampleSet


class TrainingMethod(ABC):
    name: ClassVar[str]
    # What the artifact folder holds, recorded in its manifest: "lora", "unet", "embedding", ...
    artifact_kind: ClassVar[str]
    # Whether its artifact takes a strength when it is applied (LoRA scale, hypernetwork strength).
    has_strength: ClassVar[bool] = False

    def __init__(self, config: RunConfig):
        self.config = config

    @classmethod  # noqa: B027 (an optional hook)
    def check(cls, config: RunConfig, base: BaseModelRef, dataset: PreparedDataset) -> None:
        """Refuse what cannot work with this base or data before any compute (may read tokenizers)."""

    @property
    def trains_text_encoder(self) -> bool:
        return False

    def captions_for(self, caption: str | None) -> list[str]:
        """The captions an example trains with (one is drawn per step); its own caption by default."""
        return [caption or self.config.data.instance_prompt]

    @abstractmethod
    def attach(self, model: LoadedBaseModel) -> None:
        """Make the method's parameters trainable (and add any new modules) on a frozen base."""

    @abstractmethod
    def parameter_groups(self, model: LoadedBaseModel) -> list[dict]:
        """Optimizer parameter groups (each a dict with ``params`` and optionally ``lr``)."""

    def trained_modules(self, model: LoadedBaseModel) -> dict[str, torch.nn.Module]:
        """Modules holding trainable parameters, by stable names (checkpoints, train/eval mode)."""
        modules = {"unet": model.unet}
        if self.trains_text_encoder:
            modules.update({f"text_encoder_{i}": te for i, te in enumerate(model.text_encoders)})
        return modules

    def denoiser(self, model: LoadedBaseModel) -> torch.nn.Module:
        """The module whose forward predicts the noise (wrapped in DDP when it trains)."""
        return model.unet

    def predict_noise(self, denoiser, noisy_latents, timesteps, conditioning: dict, batch: Batch) -> torch.Tensor:
        return denoiser(noisy_latents, timesteps, **conditioning).sample

    def before_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:  # noqa: B027 (an optional hook)
        """Adjust the optimizer before optimizer step ``step`` (pivotal tuning freezes its embedding)."""

    def trainable_state(self, model: LoadedBaseModel) -> dict[str, torch.Tensor]:
        """Every trainable tensor, for checkpoints."""
        state = {}
        for prefix, module in self.trained_modules(model).items():
            for name, parameter in module.named_parameters():
                if parameter.requires_grad:
                    state[f"{prefix}.{name}"] = parameter
        return state

    def load_trainable_state(self, model: LoadedBaseModel, tensors: dict[str, torch.Tensor]) -> None:
        expected = self.trainable_state(model)
        if set(tensors) != set(expected):
            missing, unexpected = set(expected) - set(tensors), set(tensors) - set(expected)
            raise RuntimeError(
                f"checkpoint does not match the {self.name} setup: {len(missing)} missing, "
                f"{len(unexpected)} unexpected tensors (e.g. {sorted(missing | unexpected)[:3]})"
            )
        with torch.no_grad():
            for name, parameter in expected.items():
                parameter.copy_(tensors[name])

    def sample_pipeline(self, model: LoadedBaseModel):
        """The pipeline that renders sample grids while training."""
        return pipeline_from_components(model)

    def sample_kwargs(self, examples: ExampleSet) -> dict:
        """Extra pipeline arguments for sample grids (ControlNet: a training condition)."""
        return {}

    @abstractmethod
    def save_artifact(self, model: LoadedBaseModel, folder: Path) -> None:
        """Write the method's weights (safetensors) into ``folder``."""

    @classmethod
    @abstractmethod
    def load_into(cls, pipe, folder: Path, manifest: ArtifactManifest, strength: float = 1.0):
        """Put a saved artifact into a pipeline of the same base; returns the pipeline to call."""
