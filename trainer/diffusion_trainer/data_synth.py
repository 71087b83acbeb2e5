"""A synthetic captioned dataset of coloured shapes ("a red circle") that a tiny model can learn.

`write_synthetic_dataset(out)` writes, under `out`:
- `raw/`      MDS: PNG image bytes + caption;
- `encoders/` a tiny VAE, CLIP text encoder and tokenizer made from configs (fixed seed), and
  the evaluation stand-ins: `clip/` (a tiny CLIP trained on the shapes, for CLIP score) and
  `fid-features/` (a small random feature network for FID);
- `latents/`  MDS: the same samples precomputed with those encoders.
The same encoders later decode samples of a model trained on `latents/`.
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from streaming import MDSWriter
from streaming.base.local import LocalDataset

from diffusion_trainer.data import RAW_COLUMNS, load_image_pixels
from diffusion_trainer.data_precompute import iterate_batches, load_encoders, write_latent_records
from diffusion_trainer.empty_caption import write_empty_caption
from diffusion_trainer.fid_features import write_tiny_fid_features
from diffusion_trainer.progress_bar import progress_bar
from diffusion_trainer.synthetic_shapes import CAPTION_WORDS, COLOURS, SHAPES, draw_shape
from diffusion_trainer.tiny_clip import write_tiny_clip
from diffusion_trainer.tiny_encoders import write_tiny_encoders


@dataclass
class SynthPaths:
    raw: Path
    encoders: Path
    latents: Path | None


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_raw_shapes(out: Path, num_samples: int, resolution: int, seed: int) -> list[str]:
    """Balanced colour x shape combinations with jittered size/position; returns the captions."""
    rng = np.random.default_rng(seed)
    combos = list(itertools.product(COLOURS, SHAPES))
    captions = []
    with (
        MDSWriter(out=str(out), columns=RAW_COLUMNS, size_limit=1 << 22) as writer,
        progress_bar("drawing shapes", total=num_samples, unit=" images") as bar,
    ):
        for index in range(num_samples):
            colour, shape = combos[index % len(combos)]
            caption = f"a {colour} {shape}"
            image = draw_shape(shape, colour, resolution, rng)
            writer.write({"image": encode_png(image), "caption": caption})
            captions.append(caption)
            bar.update()
    return captions


def load_calibration_pixels(raw: Path, resolution: int, num_samples: int) -> torch.Tensor:
    dataset = LocalDataset(str(raw))
    count = min(num_samples, len(dataset))
    return torch.stack([load_image_pixels(dataset[i]["image"], resolution) for i in range(count)])


def write_synthetic_dataset(
    out: Path,
    *,
    num_samples: int = 256,
    resolution: int = 64,
    seed: int = 0,
    with_latents: bool = True,
    with_eval_models: bool = True,
    vae_downsample_factor: int = 8,
    vae_train_steps: int = 0,
) -> SynthPaths:
    out.mkdir(parents=True, exist_ok=True)
    paths = SynthPaths(raw=out / "raw", encoders=out / "encoders", latents=None)
    write_raw_shapes(paths.raw, num_samples, resolution, seed)
    calibration = load_calibration_pixels(paths.raw, resolution, 256)
    write_tiny_encoders(
        paths.encoders,
        CAPTION_WORDS,
        seed,
        calibration,
        vae_downsample_factor=vae_downsample_factor,
        vae_train_steps=vae_train_steps,
    )
    if with_eval_models:
        write_tiny_clip(paths.encoders / "clip", seed, resolution=resolution)
        write_tiny_fid_features(paths.encoders / "fid-features", seed)
    if with_latents:
        paths.latents = out / "latents"
        encoders = load_encoders(str(paths.encoders), str(paths.encoders), torch.device("cpu"))
        dataset = LocalDataset(str(paths.raw))
        batches = iterate_batches(dataset, range(len(dataset)), resolution, batch_size=64)
        write_latent_records(encoders, batches, str(paths.latents))
        write_empty_caption(encoders.text, str(paths.latents))
    return paths
