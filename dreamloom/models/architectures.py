"""The published architectures of Stable Diffusion 1.5, 2.1 and SDXL, as configs (no weights).

``assets/architectures.json`` holds each base's UNet, VAE, text-encoder and scheduler configs as
the diffusers folders on the hub publish them. Sizing builds these modules on the meta device
(``dreamloom.sizing``); ``dreamloom.models.random_init`` builds them with random weights so that
the real shapes can be trained and served where no weights can be downloaded.
"""

from __future__ import annotations

import json
from importlib import resources

import torch

KNOWN: dict[str, dict] = {
    name: entry
    for name, entry in json.loads(
        resources.files("dreamloom.models.assets").joinpath("architectures.json").read_text()
    ).items()
    if not name.startswith("_")
}


def known_architecture(spec: str) -> str | None:
    """``sd15``/``sd21``/``sdxl`` for that name or one of its hub ids; None for anything else."""
    for name, entry in KNOWN.items():
        if spec == name or spec in entry["hub_ids"]:
            return name
    return None


def build_unet(config: dict) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_config(config)


def build_vae(config: dict) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_config(config)


def build_text_encoder(config: dict) -> torch.nn.Module:
    """A CLIP text encoder (with projection where the config names it, as SDXL's second one)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    projected = "CLIPTextModelWithProjection" in config.get("architectures", [])
    fields = {key: value for key, value in config.items() if not key.startswith("_") and key != "architectures"}
    return (CLIPTextModelWithProjection if projected else CLIPTextModel)(CLIPTextConfig(**fields))


def build_scheduler(entry: dict):
    """The base's own inference scheduler (its prediction type included: sd21 predicts v)."""
    import diffusers

    config = dict(entry.get("scheduler") or {"_class_name": "DDPMScheduler"})
    return getattr(diffusers, config.pop("_class_name")).from_config(config)


def build_tokenizers(entry: dict) -> list:
    """The real CLIP tokenizer per text encoder, padded as each base pads (sd21 and SDXL's second: "!")."""
    from dreamloom.models.tokenizer import build_clip_tokenizer

    pads = entry.get("tokenizer_pad_tokens") or ["<|endoftext|>"] * len(entry["text_encoders"])
    return [build_clip_tokenizer(pad_token=pad) for pad in pads]


def assemble_pipeline(family: str, unet, vae, text_encoders: list, tokenizers: list, scheduler):
    """A diffusers text-to-image pipeline of the family from its modules (no safety checker)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    parts = {"vae": vae, "unet": unet, "scheduler": scheduler, "text_encoder": text_encoders[0]}
    parts["tokenizer"] = tokenizers[0]
    if family == "sdxl":
        return StableDiffusionXLPipeline(**parts, text_encoder_2=text_encoders[1], tokenizer_2=tokenizers[1])
    no_checker = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    return StableDiffusionPipeline(**parts, **no_checker)
