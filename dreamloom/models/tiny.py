"""Tiny Stable-Diffusion-shaped pipelines built offline from configs.

No weights can be downloaded on our machines, so tests and demos run on these: the real diffusers
and transformers classes with the real CLIP tokenizer, small enough to train on a CPU. The same
seed gives the same weights; each kind is built once into the cache folder and reused.

Shapes follow the diffusers test-suite configs: UNet (32, 64) channels with cross-attention 32
(64 for SDXL's two concatenated encoders), a VAE that downsamples 2x (64 px -> 32x32 latents),
and CLIP text encoders with hidden size 32.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dreamloom.models.cached import cached_pipeline_folder
from dreamloom.models.tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer

TINY_KINDS = ("tiny", "tiny-sdxl")
# Bump when the builder changes, so that caches built by older code are not reused.
BUILDER_VERSION = 1
DEFAULT_SEED = 0


def ensure_tiny(kind: str = "tiny", seed: int = DEFAULT_SEED) -> Path:
    """The folder of the tiny pipeline of this kind, building it into the cache on first use."""
    if kind not in TINY_KINDS:
        raise ValueError(f"unknown tiny model {kind!r}; choose one of {', '.join(TINY_KINDS)}")
    return cached_pipeline_folder(
        f"{kind}-v{BUILDER_VERSION}-seed{seed}",
        lambda folder: build_tiny_pipeline(kind, seed).save_pretrained(folder, safe_serialization=True),
    )


def build_tiny_pipeline(kind: str = "tiny", seed: int = DEFAULT_SEED):
    if kind == "tiny-sdxl":
        return _build_tiny_sdxl(seed)
    return _build_tiny_sd(seed)


def _text_config(**extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=32,
        hidden_act="gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        **extra,
    )


def _vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=64,
    )


def sd15_scheduler():
    from diffusers import PNDMScheduler

    # Stable Diffusion 1.5's scheduler settings.
    return PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
        prediction_type="epsilon",
    )


def _build_tiny_sd(seed: int):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    vae = _vae(seed + 1)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config())
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_clip_tokenizer(),
        unet=unet,
        scheduler=sd15_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_tiny_sdxl(seed: int):
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    time_embed_dim = 8
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        transformer_layers_per_block=(1, 2),
        # six size/crop numbers, each embedded, plus the pooled text embedding
        projection_class_embeddings_input_dim=6 * time_embed_dim + 32,
        cross_attention_dim=64,
    )
    vae = _vae(seed + 1)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config())
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config())
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=build_clip_tokenizer(),
        tokenizer_2=build_clip_tokenizer(),
        unet=unet,
        scheduler=sd15_scheduler(),
    )
