"""The denoising objective shared by every method: noise, timesteps, targets and the loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr


def sample_noise(latents: torch.Tensor, noise_offset: float, generator: torch.Generator | None) -> torch.Tensor:
    """Gaussian noise; with an offset, a per-channel constant is added (brighter darks, darker lights)."""
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if noise_offset:
        channel_shift = torch.randn(
            (latents.shape[0], latents.shape[1], 1, 1), generator=generator, device=latents.device, dtype=latents.dtype
        )
        noise = noise + noise_offset * channel_shift
    return noise


def sample_timesteps(batch: int, scheduler, generator: torch.Generator | None, device) -> torch.Tensor:
    steps = scheduler.config.num_train_timesteps
    return torch.randint(0, steps, (batch,), generator=generator, device=device, dtype=torch.long)


def denoising_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    prediction = scheduler.config.prediction_type
    if prediction == "epsilon":
        return noise
    if prediction == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type {prediction!r}")


def per_sample_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    scheduler,
    snr_gamma: float | None,
) -> torch.Tensor:
    """MSE per sample; with ``snr_gamma``, Min-SNR weighting (Hang et al. 2023)."""
    loss = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma is None:
        return loss
    snr = compute_snr(scheduler, timesteps)
    clipped = torch.clamp(snr, max=snr_gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return loss * clipped / (snr + 1)
    return loss * clipped / snr
