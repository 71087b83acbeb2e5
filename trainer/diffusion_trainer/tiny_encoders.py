"""Tiny, locally generated encoders for the demo/test path: no weights exist to download.

`write_tiny_encoders` creates, from configs and a fixed seed, a CLIP tokenizer (its own small
BPE vocabulary), a tiny CLIP text encoder (hidden size = the tiny U-Net's cross-attention width)
and a tiny VAE, and saves them in the diffusers pipeline layout (vae/, text_encoder/,
tokenizer/) so every loader in the trainer can use the folder as `model.vae`/`textEncoder`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from diffusion_trainer.encoders import TEXT_MAX_LENGTH

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
WORD_END = "</w>"
TINY_TEXT_DIM = 64  # = cross_attention_dim of the tiny U-Net


def build_bpe_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Left-to-right merges that turn each word into a single token."""
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for word in words:
        symbols = [*word[:-1], word[-1] + WORD_END]
        current = symbols[0]
        for symbol in symbols[1:]:
            pair = (current, symbol)
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            current += symbol
    return merges


def list_byte_symbols() -> list[str]:
    """The 256 characters byte-level BPE (GPT-2, CLIP) writes bytes as: the printable Latin-1
    bytes stand for themselves, then the other bytes, in order, as the characters from 256 on
    (the order of GPT-2's table, which Transformers 5 no longer exports)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [byte for byte in range(256) if byte not in printable]
    return [chr(byte) for byte in printable] + [chr(256 + n) for n in range(len(others))]


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Every byte symbol (alone and word-final), each merge result, then BOS/EOS."""
    byte_symbols = list_byte_symbols()
    tokens = byte_symbols + [symbol + WORD_END for symbol in byte_symbols]
    tokens += [left + right for left, right in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab


def write_tokenizer(out_dir: Path, words: Iterable[str]) -> CLIPTokenizer:
    out_dir.mkdir(parents=True, exist_ok=True)
    merges = build_bpe_merges(sorted(set(words)))
    vocab_path = out_dir / "vocab.json"
    merges_path = out_dir / "merges.txt"
    vocab_path.write_text(json.dumps(build_vocab(merges)))
    # CLIPTokenizer skips the first line of merges.txt (a version header).
    merges_path.write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    tokenizer = CLIPTokenizer(str(vocab_path), str(merges_path), model_max_length=TEXT_MAX_LENGTH)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def build_tiny_text_encoder(tokenizer: CLIPTokenizer, seed: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=4 * TINY_TEXT_DIM,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=TEXT_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return CLIPTextModel(config).eval()


def build_tiny_vae(seed: int, downsample_factor: int = 8) -> Any:
    """An SD-shaped VAE (4 latent channels) with few, narrow blocks."""
    num_blocks = {4: 3, 8: 4}[downsample_factor]
    torch.manual_seed(seed)
    vae: Any = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * num_blocks,
        up_block_types=("UpDecoderBlock2D",) * num_blocks,
        block_out_channels=(16, 32, 32, 32)[:num_blocks],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    return vae.eval()


def calibrate_vae_scale(vae: Any, pixels: torch.Tensor) -> float:
    """Scaling factor giving unit-variance latents on `pixels` (what SD's 0.18215 does)."""
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean
    scale = float(1.0 / latents.float().std().clamp(min=1e-6))
    vae.register_to_config(scaling_factor=scale)
    return scale


def train_tiny_vae(vae: Any, pixels: torch.Tensor, num_steps: int, seed: int) -> None:
    """A short autoencoder fit so decoded samples look like the data (demo only)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    vae.train()
    for _ in range(num_steps):
        index = torch.randint(0, len(pixels), (16,), generator=generator)
        batch = pixels[index]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=generator)).sample
        loss = (recon - batch).abs().mean() + 1e-6 * posterior.kl().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    vae.eval()


def write_tiny_encoders(
    out_dir: Path,
    words: Iterable[str],
    seed: int,
    calibration_pixels: torch.Tensor,
    *,
    vae_downsample_factor: int = 8,
    vae_train_steps: int = 0,
) -> Path:
    """Create and save tokenizer/, text_encoder/ and vae/ under `out_dir`; returns it."""
    tokenizer = write_tokenizer(out_dir / "tokenizer", words)
    build_tiny_text_encoder(tokenizer, seed).save_pretrained(str(out_dir / "text_encoder"))
    vae = build_tiny_vae(seed, vae_downsample_factor)
    if vae_train_steps:
        train_tiny_vae(vae, calibration_pixels, vae_train_steps, seed)
    calibrate_vae_scale(vae, calibration_pixels[:64])
    vae.save_pretrained(str(out_dir / "vae"))
    return out_dir
