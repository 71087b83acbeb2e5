"""Frozen VAE and text encoder: loading them and encoding images and captions.

Sources are a Hugging Face id or a local path. A local path is read directly and never triggers
a download; for ids, HF_HUB_OFFLINE=1 restricts loading to the local cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextModel, CLIPTokenizer

TEXT_MAX_LENGTH = 77


def is_hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def resolve_local_folder(source: str, subfolder: str) -> Path | None:
    """The folder holding a component when `source` is a local path, else None (a hub id)."""
    root = Path(source).expanduser()
    if not root.exists():
        return None
    nested = root / subfolder
    return nested if nested.is_dir() else root


def load_component(cls: Any, source: str, subfolder: str, **kwargs: Any) -> Any:
    """`cls.from_pretrained` from a local folder (component or pipeline layout) or a hub id."""
    local = resolve_local_folder(source, subfolder)
    if local is not None:
        return cls.from_pretrained(str(local), local_files_only=True, **kwargs)
    offline = is_hub_offline()
    try:
        return cls.from_pretrained(source, subfolder=subfolder, local_files_only=offline, **kwargs)
    except OSError:
        # A hub id may name the component itself rather than a pipeline with subfolders.
        return cls.from_pretrained(source, local_files_only=offline, **kwargs)


@dataclass
class TextEncoder:
    tokenizer: CLIPTokenizer
    model: CLIPTextModel

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        return tokenize_captions(self.tokenizer, captions)

    @torch.no_grad()
    def encode_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Last hidden state (SD2's text encoder already ends at the penultimate CLIP layer)."""
        hidden: torch.Tensor = self.model(input_ids.to(self.model.device))[0]
        return hidden


def tokenize_captions(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    encoded = tokenizer(
        captions,
        padding="max_length",
        max_length=TEXT_MAX_LENGTH,
        truncation=True,
        return_tensors="pt",
    )
    ids: torch.Tensor = encoded.input_ids
    return ids


def load_tokenizer(source: str) -> CLIPTokenizer:
    tokenizer = load_component(CLIPTokenizer, source, "tokenizer")
    assert isinstance(tokenizer, CLIPTokenizer)
    return tokenizer


def load_text_encoder(source: str, device: torch.device, dtype: torch.dtype) -> TextEncoder:
    model = load_component(CLIPTextModel, source, "text_encoder", dtype=dtype)
    model.requires_grad_(False).eval().to(device=device)
    return TextEncoder(tokenizer=load_tokenizer(source), model=model)


def load_vae(source: str, device: torch.device, dtype: torch.dtype) -> Any:
    # low_cpu_mem_usage needs `accelerate`, which the trainer does not depend on.
    vae = load_component(AutoencoderKL, source, "vae", torch_dtype=dtype, low_cpu_mem_usage=False)
    vae.requires_grad_(False).eval().to(device=device)
    assert isinstance(vae, AutoencoderKL)
    return vae


@torch.no_grad()
def encode_images(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Raw (unscaled) latents: the posterior mean. The scale factor is applied elsewhere, once."""
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    latents: torch.Tensor = vae.encode(pixels).latent_dist.mean
    return latents


def vae_scaling_factor(vae: Any) -> float:
    return float(vae.config.scaling_factor)


def vae_downsample_factor(vae: Any) -> int:
    return int(2 ** (len(vae.config.block_out_channels) - 1))
