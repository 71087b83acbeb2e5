"""The evaluation set: captions to condition on and real images to compare with.

Read by index (no shuffle), so sample i is the same prompt and the same real image in every
evaluation, at any world size. Either MDS layout works:
- raw (`image`, `caption`): real images are the decoded, resized and centre-cropped pixels;
  captions are encoded by the frozen text encoder;
- precomputed latents (`latents`, `text_hidden`, `caption`): captions come pre-encoded, and the
  real images are the VAE's reconstructions of the latents, so FID measures the diffusion model
  against what its VAE can express.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from streaming import StreamingDataset

from diffusion_trainer.config import DatasetConfig
from diffusion_trainer.data import load_image_pixels, streaming_arguments
from diffusion_trainer.encoders import TextEncoder
from diffusion_trainer.sampling import pixels_to_uint8


@dataclass
class EvalBatch:
    """Samples `indices` of one sampling batch (prompts repeat when the set is smaller)."""

    indices: list[int]
    captions: list[str]
    text: torch.Tensor  # [B, 77, D] text hidden states, float32, on the device
    real_images: torch.Tensor | None  # [B, 3, H, W] uint8 on the device, when asked for


class EvalSet:
    def __init__(
        self,
        config: DatasetConfig,
        resolution: int,
        device: torch.device,
        *,
        vae: Any,
        text_encoder: TextEncoder | None,
        batch_size: int,
    ) -> None:
        self.config = config
        self.resolution = resolution
        self.device = device
        self.vae = vae
        self.text_encoder = text_encoder
        self.dataset = StreamingDataset(**streaming_arguments(config, batch_size), shuffle=False)
        if not config.precomputed_latents and text_encoder is None:
            raise ValueError("raw eval data needs model.textEncoder (or model.pretrained)")

    def __len__(self) -> int:
        return int(self.dataset.num_samples)

    def describe(self) -> dict[str, Any]:
        """What identifies the real images (for the statistics cache)."""
        return {
            "sources": [source.model_dump() for source in self.config.sources()],
            "numSamples": len(self),
            "latents": self.config.precomputed_latents,
            "resolution": self.resolution,
        }

    def read(self, indices: list[int], *, with_real_images: bool) -> EvalBatch:
        samples = [self.dataset.get_item(index % len(self)) for index in indices]
        captions = [str(sample["caption"]) for sample in samples]
        if self.config.precomputed_latents:
            # np.stack copies Streaming's read-only arrays once, into a writable batch.
            text = torch.from_numpy(np.stack([s["text_hidden"] for s in samples]))
        else:
            assert self.text_encoder is not None
            text = self.text_encoder.encode_ids(self.text_encoder.tokenize(captions))
        real = self.read_real_images(samples) if with_real_images else None
        return EvalBatch(indices, captions, text.to(self.device, torch.float32), real)

    def read_real_images(self, samples: list[dict[str, Any]]) -> torch.Tensor:
        if not self.config.precomputed_latents:
            pixels = torch.stack([load_image_pixels(s["image"], self.resolution) for s in samples])
            return pixels_to_uint8(pixels).to(self.device)
        latents = torch.from_numpy(np.stack([s["latents"] for s in samples]))
        with torch.no_grad():
            pixels = self.vae.decode(latents.to(self.device, self.vae.dtype)).sample
        return self.resized(pixels_to_uint8(pixels))

    def resized(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstructions at the eval resolution (latents may be stored at another size)."""
        if images.shape[-1] == self.resolution and images.shape[-2] == self.resolution:
            return images
        resized = torch.nn.functional.interpolate(
            images.float(), size=(self.resolution, self.resolution), mode="bicubic", antialias=True
        )
        return resized.clamp(0, 255).round().to(torch.uint8)
