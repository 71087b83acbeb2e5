"""The text encoder's output for the empty caption, stored once beside a precomputed-latent
dataset (`empty_caption.npy`, fp16, the shape of one `text_hidden`).

A dropped caption (classifier-free guidance training) must look exactly like the unconditional
input samplers use at inference: Stable Diffusion pipelines encode "" for it. The raw-image
path encodes "" on the fly; the precomputed path substitutes this stored embedding.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from streaming.base.storage import CloudDownloader

from diffusion_trainer.config import DatasetConfig
from diffusion_trainer.encoders import TextEncoder

EMPTY_CAPTION_FILE = "empty_caption.npy"
log = logging.getLogger("diffusion_trainer")


def encode_empty_caption(text: TextEncoder) -> np.ndarray:
    ids = text.tokenize([""])
    return text.encode_ids(ids)[0].to(torch.float16).cpu().numpy()


def write_empty_caption(text: TextEncoder, dataset_dir: str) -> Path:
    """Beside a local dataset's index.json (upload it with the shards)."""
    path = Path(dataset_dir) / EMPTY_CAPTION_FILE
    np.save(path, encode_empty_caption(text))
    return path


def load_empty_caption(dataset: DatasetConfig) -> torch.Tensor | None:
    """The stored embedding (fetched from `remote` the way Streaming fetches shards, into
    `local`), or None: dropped captions then fall back to zeros, which a sampler must mirror
    with zero negative prompt embeddings."""
    source = dataset.sources()[0]  # a mixture's streams share one text encoder
    local = Path(source.local) / EMPTY_CAPTION_FILE
    if source.remote and not local.exists():
        fetch(f"{source.remote.rstrip('/')}/{EMPTY_CAPTION_FILE}", local)
    if local.exists():
        return torch.from_numpy(np.load(local))
    log.warning(
        "the dataset has no %s (written by `dtj data precompute`): dropped captions train on "
        "zero text embeddings, so sample with zero negative prompt embeddings",
        EMPTY_CAPTION_FILE,
    )
    return None


def fetch(remote: str, local: Path) -> None:
    """Download to a private name, then rename: ranks of a node may fetch at once."""
    partial = local.with_name(f".{local.name}.{os.getpid()}")
    try:
        CloudDownloader.get(remote).download(remote, str(partial))
        partial.replace(local)
    except Exception as error:  # a dataset without the file is valid: say so, train on
        log.warning("cannot fetch %s: %s", remote, error)
    finally:
        partial.unlink(missing_ok=True)
