"""Model FLOPs per training image and the device peak, for MFU.

FLOPs are counted once with torch.utils.flop_counter on a meta-device copy of the U-Net
(forward + backward, batch 1): exact for the architecture, free of memory and time.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffusion_trainer.model import build_unet, use_sdpa_attention

# Dense bf16 tensor-core peaks, TFLOP/s per device, matched against the CUDA device name.
PEAK_BF16_TFLOPS = (
    ("GB200", 2500.0),
    ("B200", 2250.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
)


def count_train_flops_per_image(
    unet_config: dict[str, Any], latent_shape: tuple[int, int, int], text_shape: tuple[int, int]
) -> float:
    """Forward + backward FLOPs of one image through the U-Net (optimizer excluded)."""
    unet = build_unet(unet_config, "meta")
    use_sdpa_attention(unet)
    sample = torch.empty((1, *latent_shape), device="meta")
    timesteps = torch.zeros((1,), dtype=torch.long, device="meta")
    text = torch.empty((1, *text_shape), device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        prediction = unet(sample, timesteps, text, return_dict=False)[0]
        prediction.float().pow(2).mean().backward()
    return float(counter.get_total_flops())


def peak_flops_per_device(device: torch.device) -> float | None:
    """Peak FLOP/s of one device: DTJ_PEAK_TFLOPS if set, a known GPU, else None (e.g. CPU)."""
    override = os.environ.get("DTJ_PEAK_TFLOPS")
    if override:
        return float(override) * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for marker, tflops in PEAK_BF16_TFLOPS:
        if marker in name:
            return tflops * 1e12
    return None


def compute_mfu(
    images_per_s: float, flops_per_image: float, peak_per_device: float | None, num_devices: int
) -> float | None:
    if peak_per_device is None or flops_per_image <= 0:
        return None
    return images_per_s * flops_per_image / (peak_per_device * num_devices)
