"""Where a run starts: which committed checkpoint to resume from (RESUME_FROM, the config, or a
rollback of DTJ_ROLLBACK_CHECKPOINTS), loading it into the components, and the data skip of
DTJ_DATA_SKIP_TO_STEP. The loop keeps the step counters; this module only computes them."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from diffusion_trainer.assemble import Components
from diffusion_trainer.checkpoint import (
    CheckpointStorageError,
    CheckpointStore,
    TrainState,
    load_checkpoint,
    resolve_resume_path,
    resolve_rollback_path,
)
from diffusion_trainer.config import TrainerConfig
from diffusion_trainer.distributed import Runtime, broadcast_from_main
from diffusion_trainer.metrics import TrainerTelemetry
from diffusion_trainer.resilience import ResilienceSettings

log = logging.getLogger("diffusion_trainer")


@dataclass
class Resumer:
    config: TrainerConfig
    settings: ResilienceSettings
    runtime: Runtime
    store: CheckpointStore
    components: Components
    telemetry: TrainerTelemetry | None = None

    def load(self, path: str) -> TrainState:
        """Restore weights, optimizer, EMA, LR schedule and data position from `path`."""
        c = self.components
        started = time.perf_counter()
        state = load_checkpoint(self.store, path, c.unet, c.optimizer, c.ema)
        if self.telemetry is not None:
            self.telemetry.on_checkpoint_loaded(state.step, path, time.perf_counter() - started)
        c.lr_scheduler.load_state_dict(state.lr_scheduler)
        if state.data is not None:
            c.loader.load_state_dict(state.data)
        log.info(
            "resumed from %s at step %d (saved at world size %d, now %d)",
            path,
            state.step,
            state.world_size,
            self.runtime.world_size,
        )
        return state

    def agree_on_resume_path(self) -> str | None:
        """Rank 0 picks the checkpoint and every rank loads that one: listings of a shared
        store may differ for a moment between nodes, and a rank that loaded another step (or
        none) would hang the job in the first collective."""
        choice: tuple[str | None, str | None] = (None, None)
        if self.runtime.is_main:
            try:
                choice = (self.choose_resume_path(), None)
            except Exception as storage_error:  # every rank must hear of it, or they hang
                choice = (None, f"{type(storage_error).__name__}: {storage_error}")
        path, problem = broadcast_from_main(choice, self.runtime)
        if problem is not None:
            raise CheckpointStorageError(problem)
        return path

    def choose_resume_path(self) -> str | None:
        requested = os.environ.get("RESUME_FROM") or self.config.checkpoint.resume_from
        num_back = self.settings.rollback_checkpoints
        if num_back is None:
            return resolve_resume_path(self.store, requested)
        if requested:
            log.warning("DTJ_ROLLBACK_CHECKPOINTS=%d: ignoring %s", num_back, requested)
        newest = self.store.latest_committed()
        path = resolve_rollback_path(self.store, num_back, self.config.run.attempt)
        log.warning(
            "DTJ_ROLLBACK_CHECKPOINTS=%d: rolling back from %s to %s (newer ones uncommitted)",
            num_back,
            newest or "none",
            path or "a fresh start",
        )
        return path

    def skip_data(self, step: int, data_step_offset: int) -> int:
        """DTJ_DATA_SKIP_TO_STEP=S: the next batch is the one step S+1 of the job's first pass
        read; the step counter and the LR schedule stay where the checkpoint left them.
        Returns the new data step offset (see TrainState.data_step_offset)."""
        target = self.settings.data_skip_to_step
        data_step = step + data_step_offset
        if target is None:
            return data_step_offset
        if target <= data_step:
            log.info("DTJ_DATA_SKIP_TO_STEP=%d: data is at step %d already", target, data_step)
            return data_step_offset
        num_samples = (target - data_step) * self.config.training.global_batch_size
        position = self.components.loader.skip_samples(num_samples, self.runtime.world_size)
        log.warning(
            "DTJ_DATA_SKIP_TO_STEP=%d: skipped %d samples (the batches of steps %d-%d): step %d "
            "reads those of step %d (epoch %d, sample %d of it)",
            target,
            num_samples,
            data_step + 1,
            target,
            step + 1,
            target + 1,
            position["epoch"],
            position["sample_in_epoch"],
        )
        return data_step_offset + target - data_step
