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
from typing import Literal

import torch
from pydantic import Field

from dreamloom.errors import ArtifactError, DreamloomError
from dreamloom.methods.base import Flag, ServedAdapter, Suitability, TrainingMethod, check_same_architecture, section
from dreamloom.models.base import LoadedBaseModel, pipeline_from_components
from dreamloom.schema import Section

CONTROLNET_FOLDER = "controlnet"
# The condition encoder's channels in real Stable Diffusion; it needs one stride-2 step per VAE halving.
CONDITION_CHANNELS = (16, 32, 96, 256)


class ControlNetSettings(Section):
    condition: Literal["canny", "scribble", "mask", "user"] = Field(
        "canny", description="canny/scribble: extracted from each image; mask: name.mask.png; user: name.cond.png"
    )
    canny_low: int = Field(100, ge=0, le=255, description="Lower hysteresis threshold of the edge detector")
    canny_high: int = Field(200, ge=0, le=255, description="Upper hysteresis threshold of the edge detector")
    conditioning_scale: float = Field(1.0, ge=0, le=2, description="Strength of the control when generating")


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
    summary = "a ControlNet copied from the UNet, on --condition canny|scribble|mask|user"
    artifact_kind = "controlnet"
    artifact_files = (f"{CONTROLNET_FOLDER}/",)
    sections = {"controlnet": ControlNetSettings}
    flags = {
        "condition": Flag("controlnet.condition", "canny | scribble | mask (name.mask.png) | user (name.cond.png)")
    }
    supports_prior = False
    serving_mode = "controlnet"
    mixes_per_sample = False  # the ControlNet pipeline runs one ControlNet for the whole batch

    def __init__(self, config):
        super().__init__(config)
        self.controlnet = None

    @classmethod
    def condition(cls, config) -> ControlNetSettings:
        return config.controlnet

    @classmethod
    def trainable_params(cls, arch, config) -> int:
        from diffusers import ControlNetModel

        from dreamloom.models.meta import empty_weights

        with empty_weights():
            controlnet = ControlNetModel.from_unet(
                arch.unet(),
                conditioning_embedding_out_channels=condition_channels(arch.vae_scale_factor),
                load_weights_from_unet=False,
            )
        return sum(p.numel() for p in controlnet.parameters())

    @classmethod
    def evaluation_kind(cls, config):
        return "layout"

    @classmethod
    def evaluation_inputs(cls, config, reference) -> dict:
        """The evaluated images follow the condition of a reference image."""
        return {"control_image": cls.condition_from_photo(config, reference)}

    @classmethod
    def condition_from_photo(cls, config, photo):
        from dreamloom.data import conditions

        settings = section(config, "controlnet", ControlNetSettings)
        if settings.condition not in conditions.EXTRACTED:
            raise DreamloomError(
                f"only canny and scribble conditions are derived from a photo; this ControlNet follows "
                f"{settings.condition!r} images: pass them as they are"
            )
        return conditions.extract(photo, settings.condition, settings.canny_low, settings.canny_high)

    @classmethod
    def default_control_scale(cls, config) -> float:
        return section(config, "controlnet", ControlNetSettings).conditioning_scale

    @classmethod
    def suitability(cls, needs) -> Suitability | None:
        if not needs.spatial_control:
            return None
        notes = []
        if needs.new_to_base or needs.fine_detail:
            notes.append("combine the ControlNet with a LoRA (or pivotal tuning) that carries the concept itself")
        return Suitability(
            100, ["layout, pose or edges must be followed: only a ControlNet conditions on an image"], notes
        )

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

    def sample_inputs(self, examples) -> dict:
        return {
            "control_image": examples.condition_image(0),
            "control_scale": self.config.controlnet.conditioning_scale,
        }

    def save_artifact(self, model: LoadedBaseModel, folder: Path) -> None:
        self.controlnet.save_pretrained(folder / CONTROLNET_FOLDER, safe_serialization=True)

    @classmethod
    def check_fit(cls, folder: Path, arch, config=None) -> None:
        check_same_architecture(Path(folder) / CONTROLNET_FOLDER / "config.json", arch.unet_config, cls.name, arch.name)
        super().check_fit(folder, arch, config)

    @classmethod
    def load_into(cls, pipe, folder: Path, config=None, strength: float = 1.0):
        return controlnet_pipeline(pipe, cls._loaded(pipe, Path(folder)))

    @classmethod
    def serve(cls, pipe, folder: Path, config, key: str) -> ServedAdapter:
        return ServedAdapter(key, cls.name, controlnet=cls._loaded(pipe, Path(folder)))

    @classmethod
    def _loaded(cls, pipe, folder: Path):
        from diffusers import ControlNetModel

        if not (folder / CONTROLNET_FOLDER).is_dir():
            raise ArtifactError(f"{folder} lacks {CONTROLNET_FOLDER}/: it is not a complete artifact")
        controlnet = ControlNetModel.from_pretrained(
            folder / CONTROLNET_FOLDER, torch_dtype=pipe.unet.dtype, use_safetensors=True
        )
        return controlnet.to(pipe.device)


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
