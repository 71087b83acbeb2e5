"""The U-Net architectures the trainer ships, built from JSON configs inside the package.

Nothing here touches the network unless a pretrained source is named, and even then a local
path (or HF_HUB_OFFLINE=1) keeps every read on disk.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from diffusion_trainer.encoders import load_component

# diffusers' models as the type checker sees them: its dummy-object fallbacks hide their
# torch.nn.Module base, so they are typed as Any (the runtime classes are real Modules).
DiffusersModel = Any

UNET_NAMES = ("sd2-base", "tiny")
# The VAE of every Stable Diffusion model downsamples by 8; the tiny demo VAE by 4.
SD_VAE_SCALE_FACTOR = 8


def load_unet_config(name: str, resolution: int | None = None) -> dict[str, Any]:
    """The diffusers config of a shipped U-Net; `resolution` (pixels) sets sample_size."""
    if name not in UNET_NAMES:
        raise ValueError(f"model.unet={name!r} is not one of {', '.join(UNET_NAMES)}")
    text = resources.files("diffusion_trainer").joinpath("configs", f"{name}.json").read_text()
    config: dict[str, Any] = json.loads(text)
    if resolution is not None:
        config["sample_size"] = resolution // SD_VAE_SCALE_FACTOR
    return config


def build_unet(config: dict[str, Any], device: str | torch.device = "cpu") -> DiffusersModel:
    """A randomly initialised U-Net (on `device`; "meta" costs no memory)."""
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(config)
    assert isinstance(unet, UNet2DConditionModel)
    return unet


def load_pretrained_unet(source: str) -> DiffusersModel:
    """U-Net weights from a diffusers pipeline folder/repo (unet/ subfolder) or a bare U-Net."""
    unet = load_component(UNet2DConditionModel, source, "unet", low_cpu_mem_usage=False)
    assert isinstance(unet, UNet2DConditionModel)
    return unet


def use_sdpa_attention(unet: DiffusersModel) -> None:
    """Route every attention layer through torch's scaled_dot_product_attention (flash/mem-eff)."""
    unet.set_attn_processor(AttnProcessor2_0())


def count_parameters(module: torch.nn.Module) -> int:
    return sum(param.numel() for param in module.parameters())


def text_embedding_dim(config: dict[str, Any]) -> int:
    """Width of the text hidden states the U-Net cross-attends to (1024 for SD2)."""
    return int(config["cross_attention_dim"])
