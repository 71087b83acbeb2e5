"""Evaluation cost: seconds per 1,000 generated samples, by phase, for the tiny model on CPU.

Times the pieces one evaluation repeats for every sample on one process: DDIM sampling with
classifier-free guidance (two U-Net forwards per step) and without it (guidance 1, one forward),
VAE decoding, and the FID and CLIP-score feature updates, with the tiny models `dtj data synth`
writes. Prints a table and writes JSON to --out. SD-2-base costs are estimated from its FLOP
count in docs/evaluation.md; only a GPU run measures them.

    python tools/bench/eval_cost.py --steps 50 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from diffusion_trainer.config import ModelConfig
from diffusion_trainer.data_synth import write_synthetic_dataset
from diffusion_trainer.encoders import load_vae, vae_scaling_factor
from diffusion_trainer.eval_metrics import build_clip_score, build_fid
from diffusion_trainer.model import build_unet, load_unet_config
from diffusion_trainer.sampling import decode_to_uint8, initial_noise, sample_latents
from diffusion_trainer.schedulers import build_inference_scheduler

CAPTION = "a red circle"


def time_median_s(run: Callable[[], Any], repeats: int) -> float:
    durations = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        durations.append(time.perf_counter() - started)
    return sorted(durations)[len(durations) // 2]


def measure(encoders: Path, batch_size: int, steps: int, repeats: int) -> dict[str, float]:
    device = torch.device("cpu")
    torch.manual_seed(0)
    unet = build_unet(load_unet_config("tiny", resolution=64)).eval()
    vae = load_vae(str(encoders), device, torch.float32)
    scale = vae_scaling_factor(vae)
    fid = build_fid(str(encoders / "fid-features"), device)
    clip = build_clip_score(str(encoders / "clip"), device)
    noise = initial_noise(list(range(batch_size)), 0, (4, 8, 8))
    text = torch.randn(batch_size, 77, 64)
    latents = torch.randn(batch_size, 4, 8, 8)
    images = decode_to_uint8(vae, latents, scale)

    def sampler(guidance: float) -> Callable[[], Any]:
        return lambda: sample_latents(
            unet,
            build_inference_scheduler(ModelConfig(), "ddim"),
            noise,
            text=text,
            unconditional=torch.zeros_like(text),
            guidance_scale=guidance,
            num_inference_steps=steps,
        )

    per_batch = {
        "sample_guided": time_median_s(sampler(3.0), repeats),
        "sample_unguided": time_median_s(sampler(1.0), repeats),
        "vae_decode": time_median_s(lambda: decode_to_uint8(vae, latents, scale), repeats),
        "fid_update": time_median_s(lambda: fid.update(images, real=False), repeats),
        "clip_update": time_median_s(lambda: clip.update(images, [CAPTION] * batch_size), repeats),
    }
    return {name: round(seconds * 1000 / batch_size, 2) for name, seconds in per_batch.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("eval-cost.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        synth = write_synthetic_dataset(Path(scratch), num_samples=16, with_latents=False)
        seconds = measure(synth.encoders, args.batch_size, args.steps, args.repeats)
    guided_total = seconds["sample_guided"] + sum(
        seconds[k] for k in ("vae_decode", "fid_update", "clip_update")
    )
    result = {
        "settings": vars(args) | {"out": str(args.out)},
        "secondsPer1000Samples": seconds,
        "guidedScaleTotalSecondsPer1000": round(guided_total, 2),
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"| phase | s per 1,000 samples ({args.steps} DDIM steps, {args.threads} threads) |")
    print("|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {value} |")
    print(f"| one guided scale, all phases | {guided_total:.2f} |")


if __name__ == "__main__":
    main()
