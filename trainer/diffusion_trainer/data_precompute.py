"""Precompute VAE latents and text hidden states from a raw (image, caption) MDS dataset.

Under torchrun every rank encodes a contiguous slice of the samples into its own partition
(`part-<rank>`); rank 0 then merges the partition indexes into one dataset. Latents are stored
raw (unscaled, fp16) next to the VAE's scaling factor, which the trainer applies once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from streaming import MDSWriter
from streaming.base.local import LocalDataset
from streaming.base.util import merge_index

from diffusion_trainer.data import latent_columns, load_image_pixels
from diffusion_trainer.empty_caption import write_empty_caption
from diffusion_trainer.encoders import (
    TextEncoder,
    encode_images,
    load_text_encoder,
    load_vae,
    vae_scaling_factor,
)
from diffusion_trainer.progress_bar import progress_bar

log = logging.getLogger(__name__)
SHARD_SIZE_LIMIT = 1 << 26  # 64 MiB shards


@dataclass
class Encoders:
    vae: Any  # AutoencoderKL
    text: TextEncoder


def iterate_batches(
    dataset: LocalDataset, indices: range, resolution: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, list[str]]]:
    for start in range(indices.start, indices.stop, batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, indices.stop))]
        pixels = torch.stack([load_image_pixels(s["image"], resolution) for s in samples])
        yield pixels, [s["caption"] for s in samples]


def encode_batch(
    encoders: Encoders, pixels: torch.Tensor, captions: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    latents = encode_images(encoders.vae, pixels).to(torch.float16).cpu().numpy()
    ids = encoders.text.tokenize(captions)
    hidden = encoders.text.encode_ids(ids).to(torch.float16).cpu().numpy()
    return latents, hidden


def write_latent_records(
    encoders: Encoders,
    batches: Iterator[tuple[torch.Tensor, list[str]]],
    out: str,
    num_expected: int | None = None,
) -> int:
    """Encode `batches` into an MDS dataset at `out`; returns the number of samples written."""
    scale = vae_scaling_factor(encoders.vae)
    writer: MDSWriter | None = None
    num_samples = 0
    bar = progress_bar("encoding latents", total=num_expected)
    try:
        for pixels, captions in batches:
            latents, hidden = encode_batch(encoders, pixels, captions)
            if writer is None:
                columns = latent_columns(latents.shape[1:], hidden.shape[1:])
                writer = MDSWriter(out=out, columns=columns, size_limit=SHARD_SIZE_LIMIT)
            for latent, text, caption in zip(latents, hidden, captions, strict=True):
                writer.write(
                    {
                        "latents": latent,
                        "text_hidden": text,
                        "latent_scale": scale,
                        "caption": caption,
                    }
                )
                num_samples += 1
            bar.update(len(captions))
    finally:
        bar.close()
        if writer is not None:
            writer.finish()
    return num_samples


def slice_for_rank(num_samples: int, rank: int, world_size: int) -> range:
    per_rank = -(-num_samples // world_size)
    return range(min(rank * per_rank, num_samples), min((rank + 1) * per_rank, num_samples))


def partition_path(out: str, rank: int) -> str:
    return f"{out.rstrip('/')}/part-{rank:05d}"


def precompute_partition(
    source: str,
    out: str,
    encoders: Encoders,
    *,
    rank: int,
    world_size: int,
    resolution: int,
    batch_size: int,
) -> int:
    """Encode this rank's slice of `source`: into `out` itself when alone, else into its
    partition folder (merge them with `merge_partitions`)."""
    dataset = LocalDataset(source)
    indices = slice_for_rank(len(dataset), rank, world_size)
    target = out if world_size == 1 else partition_path(out, rank)
    batches = iterate_batches(dataset, indices, resolution, batch_size)
    num_written = write_latent_records(encoders, batches, target, num_expected=len(indices))
    log.info("rank %d wrote %d samples to %s", rank, num_written, target)
    return num_written


def merge_partitions(out: str) -> None:
    """One index.json over all part-* folders (sample order = rank order = source order)."""
    merge_index(out, keep_local=True)


def load_encoders(vae_source: str, text_encoder_source: str, device: torch.device) -> Encoders:
    # fp32: an offline pass, and SD VAEs are known to overflow in fp16.
    return Encoders(
        vae=load_vae(vae_source, device, torch.float32),
        text=load_text_encoder(text_encoder_source, device, torch.float32),
    )


def select_device() -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


def precompute_latents(
    source: str,
    out: str,
    *,
    vae_source: str,
    text_encoder_source: str,
    resolution: int,
    batch_size: int = 32,
) -> int:
    """Encode the local raw MDS dataset `source` into `out`, split across torchrun ranks."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = select_device()
    if world_size > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if world_size > 1 else 0
    encoders = load_encoders(vae_source, text_encoder_source, device)
    num_written = precompute_partition(
        source,
        out,
        encoders,
        rank=rank,
        world_size=world_size,
        resolution=resolution,
        batch_size=batch_size,
    )
    if rank == 0:
        write_empty_caption(encoders.text, out)
    if world_size == 1:
        return num_written
    counts = [0] * world_size
    dist.all_gather_object(counts, num_written)
    if rank == 0:
        merge_partitions(out)
    dist.barrier()
    dist.destroy_process_group()
    return int(sum(counts))
