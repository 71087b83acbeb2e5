"""One micro-batch: inputs onto the device, the per-sample noise, the loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffusion_trainer.assemble import Components, OnlineEncoders
from diffusion_trainer.config import TrainerConfig
from diffusion_trainer.data import Batch
from diffusion_trainer.encoders import encode_images
from diffusion_trainer.objective import SampleNoise, draw_sample_noise


@dataclass
class MicroInputs:
    latents: torch.Tensor  # scaled latents, fp32
    text: torch.Tensor  # text hidden states, fp32; the encoded "" where the caption was dropped
    draws: SampleNoise


def draw_for_batch(
    batch: Batch, config: TrainerConfig, latent_shape: tuple[int, ...]
) -> SampleNoise:
    """The loader workers' draws when they were made for this epoch, else drawn here."""
    fields = batch.fields
    if "noise" in fields and bool((fields["noise_epoch"] == batch.epoch).all()):
        return SampleNoise(
            noise=fields["noise"], timesteps=fields["timestep"], drop_caption=fields["drop_caption"]
        )
    return draw_sample_noise(
        batch.sample_ids,
        batch.epoch,
        config.training.seed,
        (latent_shape[0], latent_shape[1], latent_shape[2]),
        caption_drop_prob=config.data.train.caption_drop_prob,
        offset_noise=config.model.offset_noise,
    )


def prepare_precomputed(
    batch: Batch, config: TrainerConfig, empty_caption: torch.Tensor | None, device: torch.device
) -> MicroInputs:
    raw = batch.fields["latents"].to(device, torch.float32, non_blocking=True)
    scale = batch.fields["latent_scale"].to(device, torch.float32).view(-1, 1, 1, 1)
    latents = raw * scale  # the only place the VAE scale factor is applied
    draws = draw_for_batch(batch, config, tuple(latents.shape[1:]))
    text = batch.fields["text_hidden"].to(device, torch.float32, non_blocking=True)
    dropped = draws.drop_caption.to(device).view(-1, 1, 1)
    # A dropped caption is the encoded "" (as on the raw-image path and at inference).
    unconditional = (
        torch.zeros((), device=device)
        if empty_caption is None
        else empty_caption.to(device, torch.float32)
    )
    text = torch.where(dropped, unconditional, text)
    return MicroInputs(latents=latents, text=text, draws=draws)


def prepare_online(
    batch: Batch, config: TrainerConfig, encoders: OnlineEncoders, device: torch.device
) -> MicroInputs:
    pixels = batch.fields["pixels"]
    factor = encoders.downsample_factor
    channels = int(encoders.vae.config.latent_channels)
    shape = (channels, pixels.shape[-2] // factor, pixels.shape[-1] // factor)
    draws = draw_for_batch(batch, config, shape)
    input_ids = batch.fields["input_ids"].clone()
    input_ids[draws.drop_caption] = encoders.empty_ids[0]  # dropped caption = ""
    latents = encode_images(encoders.vae, pixels.to(device)).float() * encoders.latent_scale
    text = encoders.text.encode_ids(input_ids.to(device)).float()
    return MicroInputs(latents=latents, text=text, draws=draws)


def prepare_inputs(
    batch: Batch, config: TrainerConfig, components: Components, device: torch.device
) -> MicroInputs:
    if components.encoders is None:
        return prepare_precomputed(batch, config, components.empty_caption, device)
    return prepare_online(batch, config, components.encoders, device)


def compute_micro_loss(
    inputs: MicroInputs, components: Components, device: torch.device, channels_last: bool
) -> torch.Tensor:
    objective = components.objective
    noise = inputs.draws.noise.to(device, non_blocking=True)
    timesteps = inputs.draws.timesteps.to(device, non_blocking=True)
    noisy = objective.add_noise(inputs.latents, noise, timesteps)
    if channels_last:
        noisy = noisy.contiguous(memory_format=torch.channels_last)
    prediction = components.unet(noisy, timesteps, inputs.text, return_dict=False)[0]
    target = objective.target(inputs.latents, noise, timesteps)
    return objective.compute_loss(prediction, target, timesteps)
