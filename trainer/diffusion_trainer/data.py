"""Training data from MosaicML Streaming (MDS) shards, with exact mid-epoch resume.

Two layouts:
- precomputed latents: `latents` (fp16, raw VAE latents, unscaled), `latent_scale` (the VAE
  scaling factor, applied exactly once, by the trainer), `text_hidden` (fp16, 77 x D), `caption`;
- raw: `image` (encoded PNG/JPEG bytes) and `caption`, encoded on the fly by the frozen VAE and
  text encoder.
Every sample carries `sample_id` (its index in the dataset) so per-sample noise can be keyed on it.
"""

from __future__ import annotations

import io
import signal
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from streaming import Stream, StreamingDataLoader, StreamingDataset
from transformers import CLIPTokenizer

from diffusion_trainer.config import DatasetConfig
from diffusion_trainer.encoders import tokenize_captions
from diffusion_trainer.objective import draw_sample_noise

LATENT_COLUMNS_BASE = {"latent_scale": "float32", "caption": "str"}
RAW_COLUMNS = {"image": "bytes", "caption": "str"}


def latent_columns(latent_shape: tuple[int, ...], text_shape: tuple[int, ...]) -> dict[str, str]:
    """MDS columns of a precomputed-latent dataset with fixed per-sample shapes."""
    return {
        "latents": "ndarray:float16:" + ",".join(map(str, latent_shape)),
        "text_hidden": "ndarray:float16:" + ",".join(map(str, text_shape)),
        **LATENT_COLUMNS_BASE,
    }


def load_image_pixels(data: bytes, resolution: int) -> torch.Tensor:
    """Decode, resize the short side to `resolution`, centre-crop; float [-1, 1], CHW."""
    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGB")
    scale = resolution / min(image.size)
    size = (
        max(resolution, round(image.width * scale)),
        max(resolution, round(image.height * scale)),
    )
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    left = (image.width - resolution) // 2
    top = (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class NoiseSettings:
    """What a sample's random draws depend on besides its id and epoch."""

    seed: int
    caption_drop_prob: float
    offset_noise: float


class LatentDataset(StreamingDataset):
    """Precomputed VAE latents and text hidden states, and, with `noise`, the sample's noise,
    timestep and caption drop, drawn here in the loader workers instead of on the training
    loop's thread (they depend only on the seed, the epoch and the sample id)."""

    def __init__(self, *, noise: NoiseSettings | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.noise = noise

    # Streaming's iterator asks for one sample id at a time; that is all these support.
    def __getitem__(self, idx: int) -> dict[str, Any]:  # type: ignore[override]
        sample = super().__getitem__(idx)
        item = {
            "sample_id": idx,
            "latents": sample["latents"],  # numpy, read-only; stacked once by collate_samples
            "text_hidden": sample["text_hidden"],
            "latent_scale": float(sample["latent_scale"]),
        }
        if self.noise is not None:
            item.update(self.draw_noise(idx, tuple(sample["latents"].shape)))
        return item

    def draw_noise(self, idx: int, latent_shape: tuple[int, ...]) -> dict[str, Any]:
        # The epoch being iterated: Streaming sets next_epoch when an epoch's iteration starts.
        # The loop checks it against its own count and draws again if they ever differ.
        epoch = self.next_epoch - 1
        assert self.noise is not None
        draws = draw_sample_noise(
            [idx],
            epoch,
            self.noise.seed,
            (latent_shape[0], latent_shape[1], latent_shape[2]),
            caption_drop_prob=self.noise.caption_drop_prob,
            offset_noise=self.noise.offset_noise,
        )
        return {
            "noise": draws.noise[0],
            "timestep": draws.timesteps[0],
            "drop_caption": draws.drop_caption[0],
            "noise_epoch": epoch,
        }


class ImageCaptionDataset(StreamingDataset):
    """Encoded images and captions; decoding and tokenizing happen in the loader workers."""

    def __init__(self, *, resolution: int, tokenizer: CLIPTokenizer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.resolution = resolution
        self.tokenizer = tokenizer

    def __getitem__(self, idx: int) -> dict[str, Any]:  # type: ignore[override]
        sample = super().__getitem__(idx)
        return {
            "sample_id": idx,
            "pixels": load_image_pixels(sample["image"], self.resolution),
            "input_ids": tokenize_captions(self.tokenizer, [sample["caption"]])[0],
        }


def streaming_arguments(config: DatasetConfig, batch_size: int) -> dict[str, Any]:
    """StreamingDataset's keyword arguments for the data source, cache and downloads."""
    sources = config.sources()
    # A limit on local-only data would make Streaming evict (delete) the dataset itself.
    has_remote = any(source.remote is not None for source in sources)
    cache_limit = config.cache_limit.replace(" ", "") if has_remote and config.cache_limit else None
    where: dict[str, Any] = (
        {
            "streams": [
                Stream(remote=s.remote, local=s.local, proportion=s.proportion) for s in sources
            ]
        }
        if config.streams
        else {"remote": config.remote, "local": config.local}
    )
    return {
        **where,
        "batch_size": batch_size,
        "predownload": config.predownload or 8 * batch_size,  # Streaming's default, said aloud
        "cache_limit": cache_limit,
        "download_retry": config.download_retry,
        "download_timeout": config.download_timeout_seconds,
        "num_canonical_nodes": config.num_canonical_nodes,
        "shuffle_algo": config.shuffle_algo,
        "shuffle_block_size": config.shuffle_block_size,
    }


def build_streaming_dataset(
    config: DatasetConfig,
    micro_batch_size: int,
    seed: int,
    tokenizer: CLIPTokenizer | None,
    noise: NoiseSettings | None = None,
) -> StreamingDataset:
    common: dict[str, Any] = {
        # Streaming partitions each epoch by the per-rank batch size: it must be the micro batch.
        **streaming_arguments(config, micro_batch_size),
        "shuffle": config.shuffle,
        "shuffle_seed": seed,
    }
    if config.precomputed_latents:
        return LatentDataset(noise=noise, **common)
    if tokenizer is None:
        raise ValueError("raw image data needs a tokenizer (model.textEncoder)")
    return ImageCaptionDataset(resolution=config.resolution, tokenizer=tokenizer, **common)


@dataclass
class Batch:
    """One micro-batch as the loader yields it, plus the epoch it belongs to."""

    epoch: int
    sample_ids: list[int]
    fields: dict[str, Any]


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack each field once: numpy arrays with np.stack (one copy into the batch tensor,
    none per sample), tensors with torch.stack, numbers into a tensor."""
    batch: dict[str, Any] = {}
    for key, first in samples[0].items():
        values = [sample[key] for sample in samples]
        if isinstance(first, np.ndarray):
            batch[key] = torch.from_numpy(np.stack(values))
        elif isinstance(first, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(first, int | float):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch


def ignore_stop_signals(worker_id: int) -> None:
    """Loader workers ignore SIGTERM/SIGINT: torchrun signals each worker's whole process group,
    and a dead loader worker would abort the step the trainer is finishing before its final
    checkpoint. The trainer shuts its workers down itself on exit."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


class TrainLoader:
    """An endless micro-batch iterator over epochs, whose state resumes mid-epoch exactly."""

    def __init__(
        self, dataset: StreamingDataset, micro_batch_size: int, num_workers: int, pin_memory: bool
    ) -> None:
        self.loader = StreamingDataLoader(
            dataset,
            batch_size=micro_batch_size,
            num_workers=num_workers,
            drop_last=True,
            pin_memory=pin_memory,
            persistent_workers=num_workers > 0,
            worker_init_fn=ignore_stop_signals,
            collate_fn=collate_samples,
        )
        self.micro_batch_size = micro_batch_size
        self.epoch = 0
        self._iterator: Any = None

    def next_batch(self) -> Batch:
        while True:
            if self._iterator is None:
                self._iterator = iter(self.loader)
            try:
                fields = next(self._iterator)
            except StopIteration:
                self._iterator = None
                self.epoch += 1
                continue
            sample_ids = [int(i) for i in fields.pop("sample_id")]
            return Batch(epoch=self.epoch, sample_ids=sample_ids, fields=fields)

    def state_dict(self) -> dict[str, Any]:
        """Global position (same on every rank): epoch and samples consumed in it."""
        if self._iterator is None:
            # Before the first batch (fresh, or just restored): the dataset knows the position.
            state = self.loader.dataset.state_dict(0, from_beginning=False)  # type: ignore[attr-defined]
        else:
            state = self.loader.state_dict()
        assert state is not None
        state["epoch"] = max(int(state["epoch"]), self.epoch)
        return dict(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)
        self.epoch = int(state["epoch"])

    def samples_per_epoch(self, world_size: int) -> int:
        """Global samples one epoch yields: each rank's padded share of the epoch in whole
        micro-batches (the loader drops a last partial one)."""
        per_rank = len(self.loader.dataset)  # type: ignore[arg-type]
        return per_rank // self.micro_batch_size * self.micro_batch_size * world_size

    def skip_samples(self, num_samples: int, world_size: int) -> dict[str, Any]:
        """Move the position `num_samples` global samples forward, across epochs; only before
        the first batch. Returns the new position."""
        assert self._iterator is None, "skip_samples must come before the first batch"
        state = advance_position(self.state_dict(), num_samples, self.samples_per_epoch(world_size))
        self.load_state_dict(state)
        return state


def advance_position(
    state: dict[str, Any], num_samples: int, samples_per_epoch: int
) -> dict[str, Any]:
    """A loader position `num_samples` global samples later (Streaming's epoch and
    sample_in_epoch); the shuffle of each epoch is fixed by its number, so a later epoch is
    entered exactly where an uninterrupted run would have been."""
    epochs, sample_in_epoch = divmod(int(state["sample_in_epoch"]) + num_samples, samples_per_epoch)
    return dict(state, epoch=int(state["epoch"]) + epochs, sample_in_epoch=sample_in_epoch)
