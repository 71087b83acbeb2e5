"""Offline evaluation of one checkpoint: load its U-Net (and EMA), evaluate, report."""

from __future__ import annotations

import logging
import re
from typing import Any

from diffusion_trainer.assemble import build_model
from diffusion_trainer.checkpoint import CheckpointStore, load_checkpoint
from diffusion_trainer.config import TrainerConfig
from diffusion_trainer.distributed import Runtime, init_runtime, shutdown_runtime
from diffusion_trainer.ema import ShardedEma
from diffusion_trainer.eval_cli import is_diffusers_folder
from diffusion_trainer.eval_setup import build_evaluator
from diffusion_trainer.model import load_pretrained_unet, text_embedding_dim

log = logging.getLogger("diffusion_trainer")
STEP_IN_NAME = re.compile(r"step-(\d+)")


def step_from_name(path: str) -> int:
    match = STEP_IN_NAME.search(path.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else 0


def load_training_checkpoint(
    config: TrainerConfig, path: str, runtime: Runtime
) -> tuple[Any, ShardedEma, int]:
    """The sharded U-Net and EMA of a committed checkpoint, without its optimizer state. A
    checkpoint without an EMA starts it from the weights, so sampling it samples those."""
    store = CheckpointStore(path.rstrip("/").rsplit("/", 1)[0])
    unet = build_model(config, runtime)
    ema = ShardedEma(unet, decay=0.9999, start_step=0)  # only its weights are used
    state = load_checkpoint(store, path, unet, None, ema)
    return unet, ema, state.step


def load_unet_for_eval(
    config: TrainerConfig, checkpoint: str, runtime: Runtime
) -> tuple[Any, ShardedEma | None, int]:
    if is_diffusers_folder(checkpoint):
        # An export's unet/ already holds the EMA weights.
        unet = load_pretrained_unet(checkpoint).to(runtime.device)
        return unet, None, step_from_name(checkpoint)
    return load_training_checkpoint(config, checkpoint, runtime)


def evaluate_checkpoint(
    config: TrainerConfig, checkpoint: str, out_dir: str, stats_root: str
) -> dict[str, Any] | None:
    runtime = init_runtime()
    try:
        unet, ema, step = load_unet_for_eval(config, checkpoint, runtime)
        log.info("evaluating %s (step %d) on %d process(es)", checkpoint, step, runtime.world_size)
        evaluator = build_evaluator(
            config,
            runtime,
            text_embedding_dim(dict(unet.config)),
            stats_root,
            show_progress=True,
        )
        result = evaluator.evaluate(unet, ema, step, out_dir)
        if result is None:
            return None
        return {**result.to_json(), "report": result.report, "checkpoint": checkpoint}
    finally:
        shutdown_runtime()
