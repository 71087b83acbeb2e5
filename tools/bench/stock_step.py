"""The stock training step a user would write with plain diffusers and PyTorch: the reference
our trainer's step is measured against.

The SD-2-base U-Net (the same diffusers config the trainer ships, random init), bf16 autocast
over fp32 weights, MSE loss on the noise, backward, fused AdamW, on fixed random latents,
timesteps and text embeddings: no data loader, no sharding, no EMA, no clipping. Variants:
`eager` or `compile` (`torch.compile` of the whole model, static shapes), with `cl` for
channels_last weights and inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel
from torch.nn import functional

from diffusion_trainer.model import load_unet_config

TEXT_TOKENS = 77
LATENT_CHANNELS = 4
NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class StockInputs:
    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    text: torch.Tensor


def make_stock_inputs(
    device: torch.device, batch: int, latent_hw: int, text_dim: int, channels_last: bool
) -> StockInputs:
    latents = torch.randn(batch, LATENT_CHANNELS, latent_hw, latent_hw, device=device)
    if channels_last:
        latents = latents.to(memory_format=torch.channels_last)
    return StockInputs(
        latents=latents,
        noise=torch.randn_like(latents),
        timesteps=torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), device=device),
        text=torch.randn(batch, TEXT_TOKENS, text_dim, device=device),
    )


def run_stock_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: StockInputs
) -> torch.Tensor:
    device_type = inputs.latents.device.type
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
        prediction = model(inputs.latents, inputs.timesteps, encoder_hidden_states=inputs.text)
    loss = functional.mse_loss(prediction.sample.float(), inputs.noise.float())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def build_stock_step(
    unet_name: str, device: torch.device, res: int, batch: int, variant: str
) -> Callable[[], torch.Tensor]:
    """A closure running one stock step; `variant` is e.g. "eager", "eager+cl", "compile+cl"."""
    config = load_unet_config(unet_name)
    channels_last = "cl" in variant.split("+")
    torch.manual_seed(0)
    model = UNet2DConditionModel.from_config(config).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    inputs = make_stock_inputs(
        device, batch, res // 8, int(config["cross_attention_dim"]), channels_last
    )
    step_model: torch.nn.Module = model
    if variant.startswith("compile"):
        # A fresh Dynamo state and static shapes: a second compiled U-Net in one process
        # otherwise trips Inductor.
        torch._dynamo.reset()
        step_model = torch.compile(model, dynamic=False)  # type: ignore[assignment]
    return lambda: run_stock_step(step_model, optimizer, inputs)
