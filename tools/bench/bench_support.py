"""Helpers of the benchmarks: the synthetic latent dataset and synchronised step timing."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def write_latent_dataset(root: Path, num_samples: int, latent_hw: int, text_dim: int) -> Path:
    from streaming import MDSWriter

    from diffusion_trainer.data import latent_columns

    out = root / f"latents-{latent_hw}-{text_dim}-{num_samples}"
    if (out / "index.json").exists():
        return out
    rng = np.random.default_rng(0)
    columns = latent_columns((4, latent_hw, latent_hw), (77, text_dim))
    text = rng.standard_normal((77, text_dim)).astype(np.float16)
    with MDSWriter(out=str(out), columns=columns, size_limit=1 << 26) as writer:
        for index in range(num_samples):
            latents = rng.standard_normal((4, latent_hw, latent_hw)).astype(np.float16)
            writer.write(
                {
                    "latents": latents,
                    "text_hidden": text,
                    "latent_scale": 1.0,
                    "caption": str(index),
                }
            )
    return out


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Any, device: torch.device, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def time_interleaved(
    steps: dict[str, Any], device: torch.device, iters: int, warmup: int
) -> dict[str, float]:
    """Median step time of each side, alternating sides (ABBA) so that load changes on a
    shared machine hit both equally."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for index in range(iters):
        for name in names if index % 2 == 0 else names[::-1]:
            synchronize(device)
            started = time.perf_counter()
            steps[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}
