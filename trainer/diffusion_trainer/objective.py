"""The diffusion training objective: noise schedule, per-sample noise, targets and loss weights.

Per-sample randomness (noise, timestep, caption drop) is a pure function of
(seed, epoch, sample id), so it does not depend on which rank or micro-batch a sample lands in:
the same global batch gives the same loss at any world size and after any resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler

from diffusion_trainer.config import ModelConfig

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012
# Keeps min-SNR weights finite at the zero-SNR terminal step of a rescaled schedule.
MIN_SNR_FLOOR = 1.0e-8


def build_noise_scheduler(model: ModelConfig) -> Any:
    """SD's DDPM schedule (also exported next to the U-Net so inference matches training)."""
    return DDPMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_schedule="scaled_linear",
        beta_start=BETA_START,
        beta_end=BETA_END,
        prediction_type=model.prediction_type,
        rescale_betas_zero_snr=model.zero_terminal_snr,
        timestep_spacing="trailing" if model.zero_terminal_snr else "leading",
        steps_offset=1,  # SD's inference spacing; training uses all 1000 steps either way
        clip_sample=False,
    )


@dataclass
class SampleNoise:
    """Random draws for one micro-batch, on the CPU."""

    noise: torch.Tensor  # [B, C, H, W] float32
    timesteps: torch.Tensor  # [B] int64
    drop_caption: torch.Tensor  # [B] bool


def derive_sample_seed(seed: int, epoch: int, sample_id: int) -> int:
    state = np.random.SeedSequence([seed, epoch, sample_id]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1] >> 1)


def draw_sample_noise(
    sample_ids: list[int],
    epoch: int,
    seed: int,
    latent_shape: tuple[int, int, int],
    *,
    caption_drop_prob: float,
    offset_noise: float,
) -> SampleNoise:
    noises, timesteps, drops = [], [], []
    channels = latent_shape[0]
    for sample_id in sample_ids:
        generator = torch.Generator().manual_seed(derive_sample_seed(seed, epoch, sample_id))
        noise = torch.randn(latent_shape, generator=generator)
        offset = torch.randn((channels, 1, 1), generator=generator)
        if offset_noise > 0:
            noise = noise + offset_noise * offset
        timesteps.append(torch.randint(0, NUM_TRAIN_TIMESTEPS, (1,), generator=generator))
        drops.append(torch.rand((1,), generator=generator) < caption_drop_prob)
        noises.append(noise)
    return SampleNoise(
        noise=torch.stack(noises),
        timesteps=torch.cat(timesteps),
        drop_caption=torch.cat(drops),
    )


class DiffusionObjective:
    """Noising, the regression target and the per-sample loss weight for one schedule."""

    def __init__(self, model: ModelConfig, device: torch.device) -> None:
        scheduler = build_noise_scheduler(model)
        alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
        self.sqrt_alpha = alphas_cumprod.sqrt()
        self.sqrt_one_minus_alpha = (1.0 - alphas_cumprod).sqrt()
        self.snr = alphas_cumprod / (1.0 - alphas_cumprod)
        self.prediction_type = model.prediction_type
        self.min_snr_gamma = model.min_snr_gamma

    def add_noise(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        a = self.sqrt_alpha[timesteps].view(-1, 1, 1, 1)
        s = self.sqrt_one_minus_alpha[timesteps].view(-1, 1, 1, 1)
        return a * latents + s * noise

    def target(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return noise
        a = self.sqrt_alpha[timesteps].view(-1, 1, 1, 1)
        s = self.sqrt_one_minus_alpha[timesteps].view(-1, 1, 1, 1)
        return a * noise - s * latents

    def loss_weights(self, timesteps: torch.Tensor) -> torch.Tensor | None:
        """Min-SNR-gamma weights (Hang et al. 2023), or None for the plain MSE."""
        if self.min_snr_gamma is None:
            return None
        snr = self.snr[timesteps].clamp(min=MIN_SNR_FLOOR)
        clipped = snr.clamp(max=self.min_snr_gamma)
        if self.prediction_type == "v_prediction":
            return clipped / (snr + 1.0)
        return clipped / snr

    def compute_loss(
        self, prediction: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Mean over the micro-batch of the (weighted) per-sample MSE, in fp32."""
        per_sample = (prediction.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
        weights = self.loss_weights(timesteps)
        if weights is not None:
            per_sample = per_sample * weights
        return per_sample.mean()
