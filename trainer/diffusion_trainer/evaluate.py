"""One evaluation: sample every guidance scale, score FID and CLIP, save a grid and a report.

Samples are split across ranks by index (rank r takes r, r + world, ...), padded so that every
rank runs the same number of U-Net forwards (FSDP all-gathers are collectives); padding samples
are generated and discarded. A stop request (SIGTERM) abandons the evaluation between batches.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from diffusion_trainer.checkpoint import join_uri, write_bytes
from diffusion_trainer.config import EvalConfig, ModelConfig
from diffusion_trainer.distributed import Runtime, broadcast_from_main
from diffusion_trainer.ema import ShardedEma
from diffusion_trainer.eval_data import EvalSet
from diffusion_trainer.eval_grid import encode_grid_png
from diffusion_trainer.eval_metrics import (
    RealStatsCache,
    clear_real_stats,
    gather_real_stats_on_main,
    real_state,
    real_stats_key,
    set_real_state,
)
from diffusion_trainer.parallelize import reshard_everywhere
from diffusion_trainer.sampling import decode_to_uint8, initial_noise, sample_latents
from diffusion_trainer.schedulers import build_inference_scheduler

log = logging.getLogger("diffusion_trainer")
REPORT_FILE = "report.json"
GRID_FILE = "grid.png"


@dataclass
class EvalModels:
    """The frozen parts: VAE, the unconditional text input and the metrics."""

    vae: Any
    latent_scale: float
    latent_size: int  # eval resolution / the VAE's downsampling
    unconditional: torch.Tensor  # [77, D] float32 on the device: the encoded ""
    fid: Any | None  # FrechetInceptionDistance
    clip: Any | None  # CLIPScore
    feature_description: str = ""
    use_bf16: bool = False  # autocast the U-Net (GPUs, training.precision bf16)


@dataclass
class EvalResult:
    step: int
    num_samples: int
    fid: dict[float, float] = field(default_factory=dict)
    clip_score: dict[float, float] = field(default_factory=dict)
    seconds: float = 0.0
    grid: str | None = None
    report: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "numSamples": self.num_samples,
            "fid": {str(scale): value for scale, value in self.fid.items()},
            "clipScore": {str(scale): value for scale, value in self.clip_score.items()},
            "seconds": round(self.seconds, 3),
            "grid": self.grid,
        }


def shard_indices(num_samples: int, rank: int, world_size: int, batch_size: int) -> list[list[int]]:
    """This rank's sample indices in batches; indices >= num_samples are padding."""
    per_rank = math.ceil(num_samples / world_size)
    mine = [rank + k * world_size for k in range(per_rank)]
    return [mine[start : start + batch_size] for start in range(0, per_rank, batch_size)]


class Evaluator:
    def __init__(
        self,
        eval_config: EvalConfig,
        model_config: ModelConfig,
        runtime: Runtime,
        *,
        models: EvalModels,
        eval_set: EvalSet,
        stats_root: str,
        show_progress: bool = False,
    ) -> None:
        self.config = eval_config
        self.model_config = model_config
        self.runtime = runtime
        self.models = models
        self.eval_set = eval_set
        self.stats_root = stats_root
        self.show_progress = show_progress and runtime.is_main
        self.batches = shard_indices(
            eval_config.num_samples, runtime.rank, runtime.world_size, eval_config.batch_size
        )
        self.real_stats_ready = False

    def evaluate(
        self,
        unet: Any,
        ema: ShardedEma | None,
        step: int,
        out_dir: str,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> EvalResult | None:
        """Every rank calls this; the result (same on every rank) or None if stopped."""
        started = time.perf_counter()
        result = EvalResult(step=step, num_samples=self.config.num_samples)
        grid_images: list[tuple[float, int, torch.Tensor]] = []
        if not self.prepare_real_stats(should_stop):
            return None
        with self.sampling_weights(unet, ema):
            for scale in self.config.guidance_scales:
                if not self.score_scale(unet, scale, result, grid_images, should_stop):
                    return None
        result.seconds = time.perf_counter() - started
        self.write_outputs(result, grid_images, out_dir)
        return result

    @contextlib.contextmanager
    def sampling_weights(self, unet: Any, ema: ShardedEma | None) -> Iterator[None]:
        """The EMA (when used) in the shards, gathered afresh; afterwards the trained weights,
        and no gathered copy of the EMA left for the next training forward."""
        was_training = unet.training
        unet.eval()
        swap = ema.swapped_into_model() if ema is not None and self.config.use_ema else None
        reshard_everywhere(unet)
        try:
            with swap or contextlib.nullcontext():
                yield
        finally:
            reshard_everywhere(unet)
            unet.train(was_training)

    def progress(self, total: int, description: str) -> Any:
        return tqdm(total=total, desc=description, disable=not self.show_progress, unit="batch")

    def prepare_real_stats(self, should_stop: Callable[[], bool]) -> bool:
        """Real-image FID statistics: from the cache, or computed once and cached."""
        fid = self.models.fid
        if fid is None or self.real_stats_ready:
            return True
        description = {
            **self.eval_set.describe(),
            "features": self.models.feature_description,
            "numSamples": self.config.num_samples,
        }
        cache = RealStatsCache(self.stats_root, real_stats_key(description))
        cached = cache.load() if self.runtime.is_main else None
        if broadcast_from_main(cached is not None, self.runtime):
            if cached is not None:
                set_real_state(fid, cached)
            else:
                clear_real_stats(fid)
            self.real_stats_ready = True
            return True
        clear_real_stats(fid)  # what an abandoned earlier attempt left
        with self.progress(len(self.batches), "real images") as bar:
            for indices in self.batches:
                if should_stop():
                    return False
                self.add_real_images(indices)
                bar.update()
        gather_real_stats_on_main(fid, self.runtime.is_main)
        if self.runtime.is_main:
            cache.save(real_state(fid))
            log.info("real-image FID statistics cached at %s", cache.path)
        self.real_stats_ready = True
        return True

    def add_real_images(self, indices: list[int]) -> None:
        valid = [i for i in indices if i < self.config.num_samples]
        if not valid:
            return
        batch = self.eval_set.read(valid, with_real_images=True)
        assert batch.real_images is not None and self.models.fid is not None
        self.models.fid.update(batch.real_images, real=True)

    def score_scale(
        self,
        unet: Any,
        scale: float,
        result: EvalResult,
        grid_images: list[tuple[float, int, torch.Tensor]],
        should_stop: Callable[[], bool],
    ) -> bool:
        metrics = [m for m in (self.models.fid, self.models.clip) if m is not None]
        for metric in metrics:
            metric.reset()  # keeps FID's real statistics (reset_real_features=False)
        with self.progress(len(self.batches), f"guidance {scale:g}") as bar:
            for indices in self.batches:
                if should_stop():
                    return False
                self.sample_batch(unet, scale, indices, grid_images)
                bar.update()
        if self.models.fid is not None:
            result.fid[scale] = float(self.models.fid.compute())
        if self.models.clip is not None:
            result.clip_score[scale] = float(self.models.clip.compute())
        log.info(
            "eval step=%d guidance=%g fid=%s clip_score=%s (%d samples)",
            result.step,
            scale,
            format_metric(result.fid.get(scale)),
            format_metric(result.clip_score.get(scale)),
            self.config.num_samples,
        )
        return True

    def sample_batch(
        self,
        unet: Any,
        scale: float,
        indices: list[int],
        grid_images: list[tuple[float, int, torch.Tensor]],
    ) -> None:
        batch = self.eval_set.read(indices, with_real_images=False)
        images = self.generate(unet, scale, indices, batch.text)
        keep = [k for k, i in enumerate(indices) if i < self.config.num_samples]
        if keep:
            kept = images[keep]
            if self.models.fid is not None:
                self.models.fid.update(kept, real=False)
            if self.models.clip is not None:
                self.models.clip.update(kept, [batch.captions[k] for k in keep])
        grid_images.extend(
            (scale, index, images[k].cpu())
            for k, index in enumerate(indices)
            if index < min(self.config.num_grid_images, self.config.num_samples)
        )

    def generate(
        self, unet: Any, scale: float, indices: list[int], text: torch.Tensor
    ) -> torch.Tensor:
        device = self.runtime.device
        channels, size = int(unet.config.in_channels), self.models.latent_size
        noise = initial_noise(indices, self.config.seed, (channels, size, size)).to(device)
        unconditional = self.models.unconditional.expand(len(indices), -1, -1)
        scheduler = build_inference_scheduler(self.model_config, self.config.sampler)
        with bf16_autocast(self.models.use_bf16):
            latents = sample_latents(
                unet,
                scheduler,
                noise,
                text=text,
                unconditional=unconditional,
                guidance_scale=scale,
                num_inference_steps=self.config.num_inference_steps,
            )
        return decode_to_uint8(self.models.vae, latents, self.models.latent_scale)

    def write_outputs(
        self,
        result: EvalResult,
        grid_images: list[tuple[float, int, torch.Tensor]],
        out_dir: str,
    ) -> None:
        """Rank 0 writes the grid PNG and report.json under `out_dir`."""
        gathered: list[Any] = [None] * self.runtime.world_size
        dist.all_gather_object(gathered, grid_images, group=self.runtime.control_group)
        if not self.runtime.is_main:
            return
        everything = [item for part in gathered for item in part]
        if everything:
            result.grid = join_uri(out_dir, GRID_FILE)
            write_bytes(result.grid, encode_grid_png(everything, self.config.guidance_scales))
        result.report = join_uri(out_dir, REPORT_FILE)
        report = {**result.to_json(), **self.settings_for_report()}
        write_bytes(result.report, json.dumps(report, indent=2).encode())

    def settings_for_report(self) -> dict[str, Any]:
        config = self.config
        return {
            "seed": config.seed,
            "sampler": config.sampler,
            "numInferenceSteps": config.num_inference_steps,
            "useEma": config.use_ema,
            "worldSize": self.runtime.world_size,
            "featureExtractor": self.models.feature_description,
            "clipModel": config.clip_model if "clip" in config.metrics else None,
            "evalData": self.eval_set.describe(),
        }


def bf16_autocast(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """The U-Net's matmuls in bf16 (already so under FSDP2's bf16 mixed precision)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16)


def format_metric(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
