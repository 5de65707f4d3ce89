"""What a method is: a plug-in to the one training loop.

A method says what to make trainable, how the UNet is called for a batch, and how its artifact
is saved and applied to a pipeline. The loop owns everything else (data, Ray, checkpoints,
precision, logging, progress, sample grids).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import torch

from dreamloom.config import RunConfig
from dreamloom.models.base import LoadedBaseModel


class TrainingMethod(ABC):
    name: ClassVar[str]
    # What the artifact folder holds, recorded in its manifest: "lora" or "unet".
    artifact_kind: ClassVar[str]

    def __init__(self, config: RunConfig):
        self.config = config

    @property
    def trains_text_encoder(self) -> bool:
        return False

    @abstractmethod
    def attach(self, model: LoadedBaseModel) -> None:
        """Make the method's parameters trainable (and add any new modules) on a frozen base."""

    @abstractmethod
    def parameter_groups(self, model: LoadedBaseModel) -> list[dict]:
        """Optimizer parameter groups (each a dict with ``params`` and optionally ``lr``)."""

    def trained_modules(self, model: LoadedBaseModel) -> dict[str, torch.nn.Module]:
        """The base's modules that hold trainable parameters, by attribute name (wrapped in DDP)."""
        modules = {"unet": model.unet}
        if self.trains_text_encoder:
            modules.update({f"text_encoder_{i}": te for i, te in enumerate(model.text_encoders)})
        return modules

    def predict_noise(self, unet, noisy_latents, timesteps, conditioning: dict) -> torch.Tensor:
        return unet(noisy_latents, timesteps, **conditioning).sample

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

    @abstractmethod
    def save_artifact(self, model: LoadedBaseModel, folder: Path) -> None:
        """Write the method's weights (safetensors) into ``folder``."""

    @classmethod
    @abstractmethod
    def apply_artifact(cls, pipe, folder: Path, scale: float = 1.0) -> None:
        """Load a saved artifact into a pipeline of the same base."""
