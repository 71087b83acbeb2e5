"""The data path alone: samples/s per CPU core, and the cores a node needs to feed 8 GPUs.

Precomputed latents (SD2 shapes: fp16 4 x 32 x 32 or 4 x 64 x 64 latents and 77 x 1024 text
states, with the noise, timestep and caption drop drawn per sample as the training loader's
workers do) and raw JPEG image-caption pairs (768 x 576, decoded, resized, centre-cropped and
tokenized per sample). Each is read by one process with one thread and no workers: the rate
of one loader worker, i.e. one core. The raw path's VAE and text encoding run on the GPU and
are not counted here.

    python tools/bench/loader_bench.py --out "$OUT"            # every row
    python tools/bench/loader_bench.py --num-samples 256       # a quick look
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_support import write_latent_dataset
from PIL import Image

# Per-GPU rates the trainer must sustain (docs/benchmarks.md), and GPUs per node.
TARGET_IMAGES_PER_S = {256: 700.0, 512: 165.0}
GPUS_PER_NODE = 8
RAW_SOURCE_SIZE = (768, 576)
BATCH = 32


def measure_loader(data: Path, batch: int, tokenizer: Any = None, res: int = 256) -> float:
    """Samples/s of one dataset read in this process (no workers, one core); latents unless
    a tokenizer is given (raw images are then resized to `res`)."""
    from diffusion_trainer.config import DatasetConfig
    from diffusion_trainer.data import NoiseSettings, TrainLoader, build_streaming_dataset

    config = DatasetConfig(local=str(data), precomputedLatents=tokenizer is None, resolution=res)
    noise = NoiseSettings(seed=0, caption_drop_prob=0.1, offset_noise=0.0)
    dataset = build_streaming_dataset(config, batch, 0, tokenizer, noise)
    loader = TrainLoader(dataset, batch, num_workers=0, pin_memory=False)
    loader.next_batch()  # opens the shards
    num_batches = max(1, len(dataset) // batch - 1)
    started = time.perf_counter()
    for _ in range(num_batches):
        loader.next_batch()
    return num_batches * batch / (time.perf_counter() - started)


def encode_jpeg(rng: np.random.Generator) -> bytes:
    """A photo-like JPEG: smooth gradients plus texture (noise alone would not compress)."""
    width, height = RAW_SOURCE_SIZE
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    base = ramp * rng.uniform(0.3, 1.0, size=(1, 1, 3)).astype(np.float32)
    texture = rng.normal(0, 18, size=(height, width, 3)).astype(np.float32)
    pixels = np.clip(base + texture, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_raw_dataset(root: Path, num_samples: int) -> Path:
    from streaming import MDSWriter

    out = root / f"raw-{num_samples}"
    rng = np.random.default_rng(0)
    columns = {"image": "bytes", "caption": "str"}
    with MDSWriter(out=str(out), columns=columns, size_limit=1 << 26) as writer:
        for index in range(num_samples):
            caption = f"a photo of item {index} on a wooden table, soft light, 35mm"
            writer.write({"image": encode_jpeg(rng), "caption": caption})
    return out


def build_tokenizer(root: Path) -> Any:
    """A small BPE CLIP tokenizer over the captions' words (no download)."""
    from diffusion_trainer.tiny_encoders import write_tokenizer

    words = ["a", "photo", "of", "item", "on", "wooden", "table", "soft", "light", "35mm"] + [
        str(i) for i in range(10)
    ]
    return write_tokenizer(root / "tokenizer", words)


def loader_row(path: str, res: int, rate: float) -> dict[str, Any]:
    target = TARGET_IMAGES_PER_S[res] * GPUS_PER_NODE
    return {
        "path": path,
        "res": res,
        "samples_per_s_per_core": round(rate, 1),
        "node_target_samples_per_s": target,
        "cores_for_8_gpus": math.ceil(target / rate),
    }


def bench_loader(workdir: Path, num_samples: int) -> list[dict[str, Any]]:
    rows = []
    for res in (256, 512):
        data = write_latent_dataset(workdir, num_samples, res // 8, 1024)
        rows.append(loader_row("latents", res, measure_loader(data, BATCH)))
        print(json.dumps(rows[-1]), flush=True)
    raw, tokenizer = write_raw_dataset(workdir, num_samples), build_tokenizer(workdir)
    for res in (256, 512):
        rows.append(loader_row("raw jpeg", res, measure_loader(raw, BATCH, tokenizer, res)))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    print("\n| path | res | samples/s per core | node target (8 GPUs) | cores for 8 GPUs |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['path']} | {row['res']} | {row['samples_per_s_per_core']:.0f} | "
            f"{row['node_target_samples_per_s']:.0f} | {row['cores_for_8_gpus']} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-samples", type=int, default=2048)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one core, as one loader worker
    with tempfile.TemporaryDirectory(prefix="dtj-loader-") as workdir:
        rows = bench_loader(Path(workdir), args.num_samples)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "loader_bench.json").write_text(json.dumps(rows, indent=1))
    print_rows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
