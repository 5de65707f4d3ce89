import torch
from diffusers import DDPMScheduler

from dreamloom.training.diffusion import denoising_target, per_sample_loss, sample_noise


def _scheduler(prediction_type: str) -> DDPMScheduler:
    return DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction_type
    )


def test_noise_offset_adds_one_constant_per_sample_and_channel():
    latents = torch.zeros(2, 4, 8, 8)
    plain = sample_noise(latents, 0.0, torch.Generator().manual_seed(3))
    offset = sample_noise(latents, 0.1, torch.Generator().manual_seed(3))
    shift = offset - plain
    assert shift.abs().sum() > 0
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift))


def test_targets_follow_the_prediction_type():
    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    timesteps = torch.tensor([10, 900])
    assert torch.equal(denoising_target(_scheduler("epsilon"), latents, noise, timesteps), noise)
    v_scheduler = _scheduler("v_prediction")
    alpha = v_scheduler.alphas_cumprod[timesteps].sqrt().view(-1, 1, 1, 1)
    sigma = (1 - v_scheduler.alphas_cumprod[timesteps]).sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(
        denoising_target(v_scheduler, latents, noise, timesteps), alpha * noise - sigma * latents, atol=1e-6
    )


def test_min_snr_weighting_caps_easy_timesteps():
    scheduler = _scheduler("epsilon")
    prediction, target = torch.zeros(2, 4, 8, 8), torch.ones(2, 4, 8, 8)
    timesteps = torch.tensor([5, 950])  # very high SNR, very low SNR
    plain = per_sample_loss(prediction, target, timesteps, scheduler, None)
    weighted = per_sample_loss(prediction, target, timesteps, scheduler, 5.0)
    snr = scheduler.alphas_cumprod[timesteps] / (1 - scheduler.alphas_cumprod[timesteps])
    assert torch.allclose(plain, torch.ones(2))
    assert torch.allclose(weighted, torch.minimum(snr, torch.tensor(5.0)) / snr, rtol=1e-4)
    assert weighted[0] < 0.1 and weighted[1] == plain[1]  # noisy steps keep full weight
