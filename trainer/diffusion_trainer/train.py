"""The training loop: gradient accumulation to the global batch, clipping, EMA, logging,
periodic and final checkpoints, SIGTERM, export, and the final summary."""

from __future__ import annotations

import gc
import logging
import math
import os
import time
from dataclasses import dataclass, field

import torch
from streaming.base.util import clean_stale_shared_memory

from diffusion_trainer.assemble import Components, build_components
from diffusion_trainer.checkpoint import (
    CheckpointStorageError,
    CheckpointStore,
    TrainState,
    load_checkpoint,
    resolve_resume_path,
    save_checkpoint,
)
from diffusion_trainer.config import TrainerConfig, check_batch_divisible
from diffusion_trainer.distributed import (
    Runtime,
    any_rank_true,
    broadcast_from_main,
    init_runtime,
    mean_across_ranks,
    shutdown_runtime,
)
from diffusion_trainer.export import export_diffusers, export_path
from diffusion_trainer.flops import compute_mfu, count_train_flops_per_image, peak_flops_per_device
from diffusion_trainer.metrics import TrainerTelemetry
from diffusion_trainer.model import text_embedding_dim
from diffusion_trainer.objective import build_noise_scheduler
from diffusion_trainer.optim import clip_gradients
from diffusion_trainer.parallelize import set_gradient_sync
from diffusion_trainer.preemption import StopRequest
from diffusion_trainer.report import (
    EXIT_NONFINITE_LOSS,
    EXIT_OK,
    EXIT_SIGTERM,
    RunSummary,
    StepReport,
    StepSink,
    log_step,
)
from diffusion_trainer.span_timer import SpanTimer
from diffusion_trainer.step import compute_micro_loss, prepare_inputs

log = logging.getLogger("diffusion_trainer")


@dataclass
class IntervalStats:
    """Accumulates between two log lines; the loss stays on the device until logged."""

    num_steps: int = 0
    loss_sum: torch.Tensor | None = None
    data_wait_s: float = 0.0
    started_at: float = field(default_factory=time.perf_counter)

    def add(self, loss: torch.Tensor, data_wait_s: float) -> None:
        self.num_steps += 1
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        self.data_wait_s += data_wait_s


class TrainingLoop:
    def __init__(
        self,
        config: TrainerConfig,
        runtime: Runtime,
        components: Components,
        stop: StopRequest,
        sinks: list[StepSink],
        *,
        telemetry: TrainerTelemetry | None = None,
    ) -> None:
        self.config = config
        self.telemetry = telemetry
        self.runtime = runtime
        self.c = components
        self.stop = stop
        self.sinks = sinks
        self.store = CheckpointStore(config.checkpoint.uri)
        self.num_accum = check_batch_divisible(config.training, runtime.world_size)
        self.step = 0
        self.last_checkpoint: str | None = None
        self.last_loss: float | None = None
        self.last_images_per_s: float | None = None
        self.flops_per_image: float | None = None
        self.step_lr = 0.0
        self.peak_flops = peak_flops_per_device(runtime.device)
        self.optimizer_timer = SpanTimer(runtime.device)
        self.nonfinite_grads = torch.zeros((), dtype=torch.bool, device=runtime.device)

    def resume(self) -> None:
        path = self.agree_on_resume_path()
        if path is None:
            log.info("no committed checkpoint under %s: starting at step 0", self.store.uri)
            return
        started = time.perf_counter()
        state = load_checkpoint(self.store, path, self.c.unet, self.c.optimizer, self.c.ema)
        if self.telemetry is not None:
            self.telemetry.on_checkpoint_loaded(state.step, path, time.perf_counter() - started)
        self.c.lr_scheduler.load_state_dict(state.lr_scheduler)
        if state.data is not None:
            self.c.loader.load_state_dict(state.data)
        self.step = state.step
        self.last_checkpoint = path
        log.info(
            "resumed from %s at step %d (saved at world size %d, now %d)",
            path,
            state.step,
            state.world_size,
            self.runtime.world_size,
        )

    def agree_on_resume_path(self) -> str | None:
        """Rank 0 picks the checkpoint and every rank loads that one: listings of a shared
        store may differ for a moment between nodes, and a rank that loaded another step (or
        none) would hang the job in the first collective."""
        choice: tuple[str | None, str | None] = (None, None)
        if self.runtime.is_main:
            requested = os.environ.get("RESUME_FROM") or self.config.checkpoint.resume_from
            try:
                choice = (resolve_resume_path(self.store, requested), None)
            except Exception as storage_error:  # every rank must hear of it, or they hang
                choice = (None, f"{type(storage_error).__name__}: {storage_error}")
        path, problem = broadcast_from_main(choice, self.runtime)
        if problem is not None:
            raise CheckpointStorageError(problem)
        return path

    def train_step(self) -> tuple[torch.Tensor, float, torch.Tensor]:
        """One optimizer step over the global batch; returns (loss, data wait s, grad norm)."""
        device = self.runtime.device
        channels_last = self.config.training.channels_last
        loss_total = torch.zeros((), device=device)
        data_wait_s = 0.0
        for micro in range(self.num_accum):
            # Reduce-scatter gradients once per step, after the last micro-batch, instead of
            # once per micro-batch; costs one unsharded fp32 gradient copy of memory.
            set_gradient_sync(self.c.unet, micro == self.num_accum - 1)
            waited_from = time.perf_counter()
            batch = self.c.loader.next_batch()
            data_wait_s += time.perf_counter() - waited_from
            inputs = prepare_inputs(batch, self.config, self.c, device)
            # MFU needs a known peak; without one (CPU) the count is not worth its seconds.
            wants_flops = self.peak_flops is not None and self.runtime.is_main
            if wants_flops and self.flops_per_image is None:
                self.count_flops(tuple(inputs.latents.shape[1:]), tuple(inputs.text.shape[1:]))
            loss = compute_micro_loss(inputs, self.c, device, channels_last)
            (loss / self.num_accum).backward()
            loss_total += loss.detach() / self.num_accum
        with self.optimizer_timer.span():
            grad_norm = self.apply_gradients()
        return loss_total, data_wait_s, grad_norm

    def apply_gradients(self) -> torch.Tensor:
        """The optimizer phase: clip, step, schedule, EMA."""
        grad_norm = clip_gradients(self.c.unet, self.config.training.grad_clip_norm)
        # Remembered on the device (no sync per step), checked before every save.
        self.nonfinite_grads |= ~torch.isfinite(grad_norm)
        self.step_lr = float(self.c.optimizer.param_groups[0]["lr"])
        self.c.optimizer.step()
        self.c.lr_scheduler.step()
        self.c.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.c.ema is not None:
            self.c.ema.update(self.step)
        return grad_norm

    def count_flops(self, latent_shape: tuple[int, ...], text_shape: tuple[int, ...]) -> None:
        config = dict(self.c.unet_config)
        assert text_shape[-1] == text_embedding_dim(config), "text width != cross_attention_dim"
        self.flops_per_image = count_train_flops_per_image(
            config,
            (latent_shape[0], latent_shape[1], latent_shape[2]),
            (text_shape[0], text_shape[1]),
        )
        log.info("model FLOPs per training image (fwd+bwd): %.3f GFLOP", self.flops_per_image / 1e9)

    def report(self, stats: IntervalStats, grad_norm: torch.Tensor, epoch: int) -> StepReport:
        assert stats.loss_sum is not None
        loss = mean_across_ranks(stats.loss_sum / stats.num_steps)  # syncs the device
        elapsed_s = time.perf_counter() - stats.started_at
        images_per_s = stats.num_steps * self.config.training.global_batch_size / elapsed_s
        self.last_loss, self.last_images_per_s = loss, images_per_s
        return StepReport(
            step=self.step,
            max_steps=self.config.training.max_steps,
            loss=loss,
            lr=self.step_lr,
            images_per_s=images_per_s,
            mfu=compute_mfu(
                images_per_s, self.flops_per_image or 0.0, self.peak_flops, self.runtime.world_size
            ),
            data_wait_s=stats.data_wait_s / stats.num_steps,
            optimizer_s=self.optimizer_timer.take_total_s() / stats.num_steps,
            step_time_s=elapsed_s / stats.num_steps,
            grad_norm=float(grad_norm),
            epoch=epoch,
        )

    def save(self) -> float:
        """Commit a checkpoint of the current step; returns the seconds it took."""
        if self.last_checkpoint == self.store.path_for(self.step):
            return 0.0
        state = TrainState(
            step=self.step,
            lr_scheduler=self.c.lr_scheduler.state_dict(),
            data=self.c.loader.state_dict(),
            seed=self.config.training.seed,
            world_size=self.runtime.world_size,
            has_ema=self.c.ema is not None,
        )
        started = time.perf_counter()
        self.last_checkpoint = save_checkpoint(
            self.store,
            state,
            self.c.unet,
            self.c.optimizer,
            self.c.ema,
            runtime=self.runtime,
            keep_last=self.config.checkpoint.keep_last,
        )
        duration_s = time.perf_counter() - started
        log.info(
            "checkpoint step %d committed at %s in %.2f s",
            self.step,
            self.last_checkpoint,
            duration_s,
        )
        if self.telemetry is not None:
            self.telemetry.on_checkpoint_saved(self.step, self.last_checkpoint, duration_s)
        return duration_s

    def run(self) -> RunSummary:
        training = self.config.training
        stats = IntervalStats()
        while self.step < training.max_steps:
            loss, data_wait_s, grad_norm = self.train_step()
            stats.add(loss, data_wait_s)
            if self.step % training.log_interval_steps == 0 or self.step == training.max_steps:
                step_report = self.report(stats, grad_norm, self.c.loader.epoch)
                if self.runtime.is_main:
                    for sink in self.sinks:
                        sink(step_report)
                stats = IntervalStats()
                if not math.isfinite(step_report.loss):
                    return self.summarize(
                        "failed", EXIT_NONFINITE_LOSS, f"non-finite loss at step {self.step}"
                    )
            stopping = any_rank_true(self.stop.requested, self.runtime)
            if stopping or self.step % self.config.checkpoint.interval_steps == 0:
                if bool(self.nonfinite_grads):
                    return self.refuse_nonfinite_save()
                stats.started_at += self.save()  # saving is not step time
                # A signal that came during the save: that checkpoint is the current one.
                stopping = stopping or any_rank_true(self.stop.requested, self.runtime)
            if stopping:
                return self.summarize("preempted", EXIT_SIGTERM, "stopped by signal")
        if bool(self.nonfinite_grads):
            return self.refuse_nonfinite_save()
        self.save()
        exported = self.export() if self.config.checkpoint.export_diffusers else None
        return self.summarize("completed", EXIT_OK, "", exported)

    def refuse_nonfinite_save(self) -> RunSummary:
        """Never commit weights that a NaN/inf gradient reached: the next attempt resumes from
        the last good checkpoint instead of a poisoned one."""
        message = (
            f"non-finite gradient norm at or before step {self.step}: no checkpoint saved, "
            f"the latest committed one is {self.last_checkpoint or 'none'}"
        )
        log.error(message)
        return self.summarize("failed", EXIT_NONFINITE_LOSS, message)

    def export(self) -> str:
        destination = export_path(self.config.checkpoint.uri, self.step)
        export_diffusers(
            self.c.unet,
            self.c.ema,
            build_noise_scheduler(self.config.model),
            destination,
            self.runtime,
        )
        log.info("exported diffusers folders to %s", destination)
        return destination

    def summarize(
        self, status: str, exit_code: int, message: str, exported: str | None = None
    ) -> RunSummary:
        return RunSummary(
            status=status,
            exit_code=exit_code,
            step=self.step,
            max_steps=self.config.training.max_steps,
            final_loss=self.last_loss,
            images_per_second=self.last_images_per_s,
            last_checkpoint=self.last_checkpoint,
            exported=exported,
            message=message,
        )


def configure_backends(runtime: Runtime) -> None:
    if runtime.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def run_training(
    config: TrainerConfig,
    stop: StopRequest,
    sinks: list[StepSink] | None = None,
    telemetry: TrainerTelemetry | None = None,
) -> RunSummary:
    """Set up the process group, train, tear down; returns this rank's summary."""
    runtime = init_runtime()
    try:
        return train_on(runtime, config, stop, sinks or [log_step], telemetry)
    finally:
        gc.collect()  # release the dataset's shared memory before the process group goes
        shutdown_runtime()


def train_on(
    runtime: Runtime,
    config: TrainerConfig,
    stop: StopRequest,
    sinks: list[StepSink],
    telemetry: TrainerTelemetry | None = None,
) -> RunSummary:
    configure_backends(runtime)
    if os.environ.get("DTJ_CLEAN_STALE_SHM", "1") != "0":
        # Streaming's shared memory left in /dev/shm by a killed run on this node. It removes
        # every Streaming segment on the host: set DTJ_CLEAN_STALE_SHM=0 where several trainers
        # share one /dev/shm (pods each have their own).
        clean_stale_shared_memory()
    components = build_components(config, runtime)
    if telemetry is not None and runtime.is_main:
        sinks = [*sinks, telemetry.on_step]
    loop = TrainingLoop(config, runtime, components, stop, sinks, telemetry=telemetry)
    loop.resume()
    return loop.run()
