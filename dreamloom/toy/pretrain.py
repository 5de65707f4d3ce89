"""Pretraining the toy base model on the procedural world, on a CPU, in under an hour.

``make toy-base`` runs ``python -m dreamloom.toy.pretrain``: it renders a fixed set of captioned
pictures (seen shapes and textures only), trains a small convolutional VAE (64 px -> 16x16x4
latents, on 32 px crops), then the text encoder and UNet together on the denoising objective with caption dropout (for
classifier-free guidance) and an exponential moving average of the weights, and saves a Stable
Diffusion pipeline folder (fp16 safetensors, the real CLIP tokenizer) with its config and
training log. The same config and seed give the same model on the same machine.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dreamloom.models.base import TOY_BASE_FOLDER
from dreamloom.toy import world


@dataclass(frozen=True)
class ToyBaseConfig:
    seed: int = 0
    images: int = 20_000
    threads: int = 2
    vae_steps: int = 2400
    vae_batch: int = 32
    vae_crop: int = 32  # the VAE is fully convolutional: training on crops is 4x cheaper per step
    vae_channels: tuple[int, ...] = (32, 64, 64)
    vae_learning_rate: float = 2e-3
    vae_kl_weight: float = 1e-6
    unet_steps: int = 5000
    batch: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    time_budget_minutes: float = 55.0  # the UNet stops early rather than overrun this
    text_hidden: int = 32
    unet_channels: tuple[int, ...] = (64, 96, 128)


def build_components(config: ToyBaseConfig):
    """Untrained VAE, text encoder, tokenizer, UNet and scheduler, shaped for the toy world."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dreamloom.models.tiny import sd15_scheduler
    from dreamloom.models.tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer

    torch.manual_seed(config.seed)
    vae = AutoencoderKL(
        block_out_channels=config.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=world.SIZE,
        mid_block_add_attention=False,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=config.text_hidden,
            intermediate_size=config.text_hidden * 2,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=config.text_hidden,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=world.SIZE // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=config.unet_channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=config.text_hidden,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    noise = DDPMScheduler.from_config(sd15_scheduler().config)
    return vae, text_encoder, build_clip_tokenizer(), unet, noise


class _Log:
    def __init__(self):
        self.started = time.perf_counter()
        self.entries: list[dict] = []

    def __call__(self, part: str, step: int, total: int, **values: float) -> None:
        elapsed = time.perf_counter() - self.started
        self.entries.append(
            {"part": part, "step": step, "seconds": round(elapsed, 1), **{k: round(v, 5) for k, v in values.items()}}
        )
        summary = " ".join(f"{k} {v:.4f}" for k, v in values.items())
        print(f"[toy base] {part} {step}/{total} {summary} ({elapsed / 60:.1f} min)", flush=True)

    @property
    def minutes(self) -> float:
        return (time.perf_counter() - self.started) / 60


def _render_all(config: ToyBaseConfig) -> tuple[list[world.Scene], np.ndarray]:
    pairs = world.dataset(config.images, config.seed)
    pixels = np.stack([np.asarray(world.render(scene, seed), dtype=np.uint8) for scene, seed in pairs])
    return [scene for scene, _ in pairs], pixels


def _as_input(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def train_vae(vae, pixels: np.ndarray, config: ToyBaseConfig, log: _Log) -> float:
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.vae_learning_rate, total_steps=config.vae_steps)
    vae.train()
    for step in range(1, config.vae_steps + 1):
        batch = _random_crop(_as_input(pixels[rng.integers(0, len(pixels), config.vae_batch)]), config.vae_crop, rng)
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        mse = F.mse_loss(reconstruction, batch)
        loss = mse + F.l1_loss(reconstruction, batch) + config.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == config.vae_steps:
            log("vae", step, config.vae_steps, mse=mse.item())
    vae.eval()
    return mse.item()


def _random_crop(batch: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    top, left = rng.integers(0, batch.shape[-1] - size + 1, 2)
    return batch[:, :, top : top + size, left : left + size]


@torch.no_grad()
def encode_all(vae, pixels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for start in range(0, len(pixels), 256):
        posterior = vae.encode(_as_input(pixels[start : start + 256])).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def train_denoiser(
    text_encoder, tokenizer, unet, noise, latents, captions: list[str], config: ToyBaseConfig, log: _Log
):
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    mean, std = latents
    ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=1e-2)
    schedule = get_scheduler(
        "cosine", optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.unet_steps
    )
    ema = EMAModel(parameters, decay=config.ema_decay)
    generator = torch.Generator().manual_seed(config.seed)
    scale = noise_scaling(latents)
    unet.train()
    text_encoder.train()
    step = 0
    for step in range(1, config.unet_steps + 1):
        rows = torch.randint(0, len(ids), (config.batch,), generator=generator)
        batch_ids = ids[rows].clone()
        dropped = torch.rand(config.batch, generator=generator) < config.caption_dropout
        batch_ids[dropped] = empty
        sample = mean[rows] + std[rows] * torch.randn(mean[rows].shape, generator=generator)
        x0 = sample * scale
        eps = torch.randn(x0.shape, generator=generator)
        timesteps = torch.randint(0, noise.config.num_train_timesteps, (config.batch,), generator=generator)
        prediction = unet(
            noise.add_noise(x0, eps, timesteps), timesteps, encoder_hidden_states=text_encoder(batch_ids)[0]
        ).sample
        loss = F.mse_loss(prediction, eps)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        ema.step(parameters)
        if step % 50 == 0 or step == config.unet_steps:
            log("denoiser", step, config.unet_steps, loss=loss.item())
        if log.minutes > config.time_budget_minutes:
            log("denoiser stopped at the time budget", step, config.unet_steps, loss=loss.item())
            break
    ema.copy_to(parameters)
    unet.eval()
    text_encoder.eval()
    return step


def noise_scaling(latents: tuple[torch.Tensor, torch.Tensor]) -> float:
    """SD's convention: scale latents to unit variance (computed once from the data's means)."""
    return float(1.0 / latents[0].std())


def pretrain(config: ToyBaseConfig = ToyBaseConfig(), folder: Path = TOY_BASE_FOLDER) -> dict:
    from diffusers import StableDiffusionPipeline

    from dreamloom.models.tiny import sd15_scheduler

    torch.set_num_threads(config.threads)
    random.seed(config.seed)
    log = _Log()
    scenes, pixels = _render_all(config)
    log("rendered", len(scenes), len(scenes))
    vae, text_encoder, tokenizer, unet, noise = build_components(config)
    reconstruction_mse = train_vae(vae, pixels, config, log)
    latents = encode_all(vae, pixels)
    scaling = noise_scaling(latents)
    vae.register_to_config(scaling_factor=scaling)
    steps = train_denoiser(text_encoder, tokenizer, unet, noise, latents, [s.caption() for s in scenes], config, log)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sd15_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder.mkdir(parents=True, exist_ok=True)
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    report = {
        "config": asdict(config),
        "vae_reconstruction_mse": reconstruction_mse,
        "latent_scaling_factor": scaling,
        "denoiser_steps": steps,
        "minutes": round(log.minutes, 1),
        "log": log.entries,
    }
    (folder / "toy_config.json").write_text(json.dumps(asdict(config), indent=1))
    (folder / "training_log.json").write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Pretrain the toy base model (about 50 minutes on 2 cores).")
    parser.add_argument("--out", type=Path, default=TOY_BASE_FOLDER)
    parser.add_argument("--unet-steps", type=int, default=ToyBaseConfig.unet_steps)
    parser.add_argument("--vae-steps", type=int, default=ToyBaseConfig.vae_steps)
    parser.add_argument("--images", type=int, default=ToyBaseConfig.images)
    parser.add_argument("--minutes", type=float, default=ToyBaseConfig.time_budget_minutes)
    args = parser.parse_args(argv)
    config = ToyBaseConfig(
        unet_steps=args.unet_steps, vae_steps=args.vae_steps, images=args.images, time_budget_minutes=args.minutes
    )
    report = pretrain(config, args.out)
    print(json.dumps({k: v for k, v in report.items() if k != "log"}, indent=1))


if __name__ == "__main__":
    main()
