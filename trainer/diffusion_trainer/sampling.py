"""Text-to-image sampling with classifier-free guidance, from the U-Net being trained.

Every sample's starting noise is a pure function of (seed, sample index), so an image does not
depend on the batch or the rank it lands in: numbers are reproducible and comparable across
checkpoints and world sizes. Guidance scale 1 is the plain conditional prediction (one forward
per step, no unconditional branch).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

EVAL_NOISE_STREAM = 0xE7A1  # keeps eval noise apart from the training draws of the same seed


def eval_noise_seed(seed: int, sample_index: int) -> int:
    state = np.random.SeedSequence([seed, EVAL_NOISE_STREAM, sample_index])
    return int(state.generate_state(1, dtype=np.uint64)[0] >> 1)


def initial_noise(
    sample_indices: list[int], seed: int, latent_shape: tuple[int, int, int]
) -> torch.Tensor:
    """[B, C, H, W] float32 on the CPU, one generator per sample."""
    draws = [
        torch.randn(latent_shape, generator=torch.Generator().manual_seed(eval_noise_seed(seed, i)))
        for i in sample_indices
    ]
    return torch.stack(draws)


def predict_guided(
    unet: Any,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    *,
    text: torch.Tensor,
    unconditional: torch.Tensor,
    guidance_scale: float,
) -> torch.Tensor:
    """uncond + scale * (cond - uncond), in one batched forward; scale 1: cond alone."""
    if guidance_scale == 1.0:
        return unet(latents, timestep, text, return_dict=False)[0].float()
    both = unet(
        torch.cat([latents, latents]),
        timestep,
        torch.cat([unconditional, text]),
        return_dict=False,
    )[0].float()
    uncond, cond = both.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


@torch.no_grad()
def sample_latents(
    unet: Any,
    scheduler: Any,
    noise: torch.Tensor,
    *,
    text: torch.Tensor,
    unconditional: torch.Tensor,
    guidance_scale: float,
    num_inference_steps: int,
) -> torch.Tensor:
    """Denoise `noise` (scaled latent space) conditioned on `text`; `unconditional` is the
    encoded "" broadcast to the batch."""
    scheduler.set_timesteps(num_inference_steps, device=noise.device)
    latents = noise * scheduler.init_noise_sigma
    for timestep in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, timestep)
        prediction = predict_guided(
            unet,
            model_input,
            timestep,
            text=text,
            unconditional=unconditional,
            guidance_scale=guidance_scale,
        )
        latents = scheduler.step(prediction, timestep, latents, return_dict=False)[0]
    return latents


@torch.no_grad()
def decode_to_uint8(vae: Any, latents: torch.Tensor, latent_scale: float) -> torch.Tensor:
    """Scaled latents to uint8 RGB [B, 3, H, W] in [0, 255], the range both metrics expect
    (FID with normalize=False; CLIPScore's processor rescales by 1/255 itself)."""
    pixels = vae.decode(latents.to(vae.device, vae.dtype) / latent_scale).sample
    return pixels_to_uint8(pixels)


def pixels_to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats to uint8, rounded (truncation would bias every channel down by 0.5)."""
    return ((pixels.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
