"""ControlNet: a trainable copy of the UNet's encoder, joined to the frozen UNet by zero convolutions,
that learns to follow a condition image (edges, scribbles, masks, or your own).

The ControlNet starts as a copy of the base UNet (``ControlNetModel.from_unet``) with its output
convolutions at zero, so training starts exactly at the base model. The artifact is a diffusers
``ControlNetModel`` folder; generation goes through the ControlNet pipelines with a condition
image and a conditioning scale.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from dreamloom.errors import DreamloomError
from dreamloom.methods.base import TrainingMethod
from dreamloom.models.base import LoadedBaseModel, pipeline_from_components

CONTROLNET_FOLDER = "controlnet"
# The condition encoder's channels in real Stable Diffusion; it needs one stride-2 step per VAE halving.
CONDITION_CHANNELS = (16, 32, 96, 256)


class ControlledUNet(torch.nn.Module):
    """The ControlNet's residuals fed into the frozen UNet, as one denoiser."""

    def __init__(self, controlnet, unet):
        super().__init__()
        self.controlnet, self.unet = controlnet, unet

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, added_cond_kwargs=None):
        extra = {} if added_cond_kwargs is None else {"added_cond_kwargs": added_cond_kwargs}
        down, middle = self.controlnet(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            controlnet_cond=controlnet_cond,
            return_dict=False,
            **extra,
        )
        return self.unet(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            down_block_additional_residuals=down,
            mid_block_additional_residual=middle,
            **extra,
        )


def condition_channels(vae_scale_factor: int) -> tuple[int, ...]:
    return CONDITION_CHANNELS[: int(math.log2(vae_scale_factor)) + 1]


class ControlNetMethod(TrainingMethod):
    name = "controlnet"
    artifact_kind = "controlnet"

    def __init__(self, config):
        super().__init__(config)
        self.controlnet = None

    def attach(self, model: LoadedBaseModel) -> None:
        from diffusers import ControlNetModel

        self.controlnet = ControlNetModel.from_unet(
            model.unet, conditioning_embedding_out_channels=condition_channels(model.vae_scale_factor)
        ).to(model.device)
        self.controlnet.requires_grad_(True)

    def trained_modules(self, model: LoadedBaseModel) -> dict[str, torch.nn.Module]:
        return {"controlnet": self.controlnet}

    def denoiser(self, model: LoadedBaseModel) -> torch.nn.Module:
        return ControlledUNet(self.controlnet, model.unet)

    def predict_noise(self, denoiser, noisy_latents, timesteps, conditioning: dict, batch) -> torch.Tensor:
        return denoiser(noisy_latents, timesteps, controlnet_cond=batch.condition, **conditioning).sample

    def parameter_groups(self, model: LoadedBaseModel) -> list[dict]:
        return [{"params": list(self.controlnet.parameters())}]

    def sample_pipeline(self, model: LoadedBaseModel):
        return controlnet_pipeline(pipeline_from_components(model), self.controlnet)

    def sample_kwargs(self, examples) -> dict:
        return {
            "image": examples.condition_image(0),
            "controlnet_conditioning_scale": self.config.controlnet.conditioning_scale,
        }

    def save_artifact(self, model: LoadedBaseModel, folder: Path) -> None:
        self.controlnet.save_pretrained(folder / CONTROLNET_FOLDER, safe_serialization=True)

    @classmethod
    def load_into(cls, pipe, folder: Path, manifest=None, strength: float = 1.0):
        from diffusers import ControlNetModel

        controlnet = ControlNetModel.from_pretrained(
            Path(folder) / CONTROLNET_FOLDER, torch_dtype=pipe.unet.dtype, use_safetensors=True
        )
        return controlnet_pipeline(pipe, controlnet.to(pipe.device))


def controlnet_pipeline(pipe, controlnet):
    """The ControlNet variant of a text-to-image pipeline, sharing all its components."""
    from diffusers import (
        StableDiffusionControlNetPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLControlNetPipeline,
        StableDiffusionXLPipeline,
    )

    variants = {
        StableDiffusionPipeline: StableDiffusionControlNetPipeline,
        StableDiffusionXLPipeline: StableDiffusionXLControlNetPipeline,
    }
    variant = variants.get(type(pipe))
    if variant is None:
        raise DreamloomError(f"no ControlNet pipeline for {type(pipe).__name__}")
    controlled = variant(**pipe.components, controlnet=controlnet)
    controlled.set_progress_bar_config(disable=True)
    return controlled
