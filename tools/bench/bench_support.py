"""Helpers of the training-step benchmark: the synthetic latent dataset, the data-path
measurement, and synchronised step timing."""

from __future__ import annotations

import json
import statistics
import tempfile
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


def measure_loader(data: Path, batch: int) -> float:
    """Samples/s of the precomputed-latent dataset read in one process (one core)."""
    from diffusion_trainer.config import DatasetConfig
    from diffusion_trainer.data import TrainLoader, build_streaming_dataset

    dataset = build_streaming_dataset(DatasetConfig(local=str(data)), batch, 0, None)
    loader = TrainLoader(dataset, batch, num_workers=0, pin_memory=False)
    loader.next_batch()  # opens the shards
    num_batches = max(1, len(dataset) // batch - 1)
    started = time.perf_counter()
    for _ in range(num_batches):
        loader.next_batch()
    return num_batches * batch / (time.perf_counter() - started)


def bench_loader_only(out: Path) -> int:
    """The data path alone: SD2-shaped precomputed samples (fp16 latents + 77x1024 text)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="dtj-bench-") as workdir:
        for res in (256, 512):
            data = write_latent_dataset(Path(workdir), 2048, res // 8, 1024)
            rate = measure_loader(data, 32)
            rows.append({"res": res, "loader_samples_per_s_per_core": rate})
            print(json.dumps(rows[-1]), flush=True)
    (out / "loader_bench.json").write_text(json.dumps(rows, indent=1))
    print(f"\n{'res':>4} {'samples/s per core':>18}")
    for row in rows:
        print(f"{row['res']:4d} {row['loader_samples_per_s_per_core']:18.0f}")
    return 0


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


def format_side(side: dict[str, Any]) -> str:
    if "error" in side:
        return f"{'ERROR':>9} {'':>8} {'':>6}"
    mfu = "n/a" if "mfu" not in side else f"{100 * side['mfu']:.1f}%"
    return f"{side['img_s']:9.4g} {side['tflops']:8.3g} {mfu:>6}"


def print_table(rows: list[dict[str, Any]], device_name: str) -> None:
    print(f"\ndevice: {device_name}")
    print(
        f"{'res':>4} {'bs':>4} {'variant':11} | {'stock img/s':>9} {'TFLOP/s':>8} {'MFU':>6} | "
        f"{'ours img/s':>9} {'TFLOP/s':>8} {'MFU':>6} | {'ours/stock':>10} {'loader/core':>11}"
    )
    for row in rows:
        ratio = f"{row['ratio']:10.3f}" if "ratio" in row else f"{'-':>10}"
        loader = row["ours"].get("loader_samples_per_s_per_core")
        loader_text = f"{loader:11.0f}" if loader else f"{'-':>11}"
        print(
            f"{row['res']:4d} {row['bs']:4d} {row['variant']:11} | {format_side(row['stock'])} | "
            f"{format_side(row['ours'])} | {ratio} {loader_text}"
        )
    for row in rows:
        for side in ("stock", "ours"):
            if "error" in row[side]:
                print(f"{row['res']} {row['bs']} {row['variant']} {side}: {row[side]['error']}")
