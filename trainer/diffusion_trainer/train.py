"""The training loop: gradient accumulation to the global batch, clipping, EMA, logging,
periodic and final checkpoints, SIGTERM, export, and the final summary.

Fault tolerance (settings in resilience.py): optimizer steps with a non-finite gradient norm are
skipped on the device and counted (loop_health.py); the counts are read where the loop
synchronises anyway (log steps, before each save), and a streak of DTJ_MAX_NONFINITE_SKIPS ends
the run (exit 3) before anything is committed after it. A rollback resumes from an older
checkpoint and can skip the data that led to the fault (resume.py). A watchdog ends a rank that
stops making steps (exit 4)."""

from __future__ import annotations

import gc
import logging
import math
import os
import time
from collections.abc import Callable

import torch
from streaming.base.util import clean_stale_shared_memory

from diffusion_trainer.assemble import Components, build_components
from diffusion_trainer.checkpoint import CheckpointStore, TrainState, save_checkpoint
from diffusion_trainer.config import TrainerConfig, check_batch_divisible
from diffusion_trainer.distributed import (
    Runtime,
    StopVote,
    any_rank_true,
    init_runtime,
    shutdown_runtime,
    sum_across_ranks,
)
from diffusion_trainer.eval_online import OnlineEval
from diffusion_trainer.export import export_diffusers, export_path
from diffusion_trainer.fault_injection import (
    FaultInjection,
    hang_for_fault_tests,
    read_fault_injection,
)
from diffusion_trainer.flops import compute_mfu, count_train_flops_per_image, peak_flops_per_device
from diffusion_trainer.interval import IntervalStats, StepOutcome
from diffusion_trainer.loop_health import LoopHealth
from diffusion_trainer.metrics import TrainerTelemetry
from diffusion_trainer.model import text_embedding_dim
from diffusion_trainer.optim import clip_gradients
from diffusion_trainer.parallelize import set_micro_batch_mode
from diffusion_trainer.preemption import StopRequest
from diffusion_trainer.report import (
    EXIT_ERROR,
    EXIT_NONFINITE_LOSS,
    EXIT_OK,
    EXIT_SIGTERM,
    FAILURE_ERROR,
    FAILURE_NONFINITE,
    RunSummary,
    StepReport,
    StepSink,
    log_step,
)
from diffusion_trainer.resilience import ResilienceSettings, read_resilience_settings
from diffusion_trainer.resume import Resumer
from diffusion_trainer.span_timer import SpanTimer
from diffusion_trainer.step import compute_micro_loss, prepare_inputs
from diffusion_trainer.watchdog import CHECKPOINTING, STOPPING

log = logging.getLogger("diffusion_trainer")


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
        settings: ResilienceSettings | None = None,
        faults: FaultInjection | None = None,
    ) -> None:
        self.config = config
        self.settings = settings or ResilienceSettings()
        self.faults = faults or FaultInjection()
        self.telemetry = telemetry
        self.runtime = runtime
        self.c = components
        self.stop = stop
        self.stop_vote = StopVote(runtime)
        self.sinks = sinks
        self.store = CheckpointStore(config.checkpoint.uri)
        self.num_accum = check_batch_divisible(config.training, runtime.world_size)
        self.step = 0
        self.data_step_offset = 0  # see TrainState.data_step_offset
        self.last_checkpoint: str | None = None
        self.last_checkpoint_step: int | None = None
        self.last_loss: float | None = None
        self.last_images_per_s: float | None = None
        self.flops_per_image: float | None = None
        self.step_lr = 0.0
        self.peak_flops = peak_flops_per_device(runtime.device)
        self.optimizer_timer = SpanTimer(runtime.device)
        self.resumer = Resumer(config, self.settings, runtime, self.store, components, telemetry)
        self.health = LoopHealth(self.settings, runtime, self.summarize, telemetry)
        self.online_eval = OnlineEval(
            config, runtime, components, health=self.health, stop=stop, telemetry=telemetry
        )

    def resume(self) -> None:
        path = self.resumer.agree_on_resume_path()
        if path is None:
            log.info("no committed checkpoint under %s: starting at step 0", self.store.uri)
        else:
            state = self.resumer.load(path)
            self.step = state.step
            self.data_step_offset = state.data_step_offset
            self.last_checkpoint, self.last_checkpoint_step = path, state.step
        self.data_step_offset = self.resumer.skip_data(self.step, self.data_step_offset)

    def train_step(self) -> StepOutcome:
        """One optimizer step over the global batch."""
        device = self.runtime.device
        channels_last = self.config.training.channels_last
        poisoned = self.poisons_next_step()
        loss_total = torch.zeros((), device=device)
        data_wait_s = 0.0
        for micro in range(self.num_accum):
            set_micro_batch_mode(
                self.c.unet,
                is_last=micro == self.num_accum - 1,
                keep_gathered=not self.config.training.reshard_after_forward,
            )
            waited_from = time.perf_counter()
            batch = self.c.loader.next_batch()
            data_wait_s += time.perf_counter() - waited_from
            inputs = prepare_inputs(batch, self.config, self.c, device)
            # MFU needs a known peak; without one (CPU) the count is not worth its seconds.
            wants_flops = self.peak_flops is not None and self.runtime.is_main
            if wants_flops and self.flops_per_image is None:
                self.count_flops(tuple(inputs.latents.shape[1:]), tuple(inputs.text.shape[1:]))
            loss = compute_micro_loss(inputs, self.c, device, channels_last)
            if poisoned:
                loss = loss * float("nan")
            (loss / self.num_accum).backward()
            loss_total += loss.detach() / self.num_accum
        with self.optimizer_timer.span():
            grad_norm, skipped = self.apply_gradients()
        return StepOutcome(loss_total, data_wait_s, grad_norm, skipped)

    def poisons_next_step(self) -> bool:
        """DTJ_FAULT_NAN_STEPS (fault injection): keyed on the data the step reads."""
        data_step = self.step + self.data_step_offset + 1
        poisoned = self.faults.poisons(data_step)
        if poisoned and self.runtime.is_main:
            log.warning("fault injection: NaN loss (data step %d)", data_step)
        return poisoned

    def apply_gradients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The optimizer phase: clip, step, schedule, EMA; returns (grad norm, skipped)."""
        grad_norm = clip_gradients(
            self.c.unet, self.config.training.grad_clip_norm, self.c.norm_group
        )
        # Same on every rank (the norm is global); counted on the device, no sync per step.
        skipped = (~torch.isfinite(grad_norm)).float()
        self.health.record_skipped(skipped)
        self.step_lr = float(self.c.optimizer.param_groups[0]["lr"])
        # The fused kernel leaves weights, moments and step counts alone when skipped.
        self.c.optimizer.step(found_inf=skipped)
        # The schedule advances even on a skipped step: holding it back would need the host
        # to read `skipped` every step, and keyed on batches consumed it still ends at maxSteps.
        self.c.lr_scheduler.step()
        self.c.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.c.ema is not None:
            # After a skipped step the weights are unchanged, so this folds in the same weights
            # once more: harmless, and a skip-aware decay would need a sync or a kernel per tensor.
            self.c.ema.update(self.step)
        return grad_norm, skipped

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
        """The interval's mean loss over its steps that were not skipped (NaN if all were),
        averaged over ranks."""
        assert stats.sums is not None
        loss_sum, kept, skipped = sum_across_ranks(stats.sums)  # syncs the device
        loss = loss_sum / kept if kept else float("nan")
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
            skipped_steps=round(skipped / self.runtime.world_size),
        )

    def save(self) -> float:
        """Commit a checkpoint of the current step; returns the seconds it took."""
        if self.last_checkpoint == self.store.path_for(self.step):
            return 0.0
        resumed_activity = self.health.activity
        self.health.set_activity(CHECKPOINTING)
        try:
            return self.write_checkpoint()
        finally:
            self.health.set_activity(resumed_activity)

    def write_checkpoint(self) -> float:
        state = TrainState(
            step=self.step,
            lr_scheduler=self.c.lr_scheduler.state_dict(),
            data=self.c.loader.state_dict(),
            seed=self.config.training.seed,
            world_size=self.runtime.world_size,
            has_ema=self.c.ema is not None,
            data_step_offset=self.data_step_offset,
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
        self.last_checkpoint_step = self.step
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
        self.health.start()
        try:
            return self.train_to_end()
        finally:
            self.health.stop()

    def train_to_end(self) -> RunSummary:
        training = self.config.training
        stats = IntervalStats()
        while self.step < training.max_steps:
            if self.faults.hangs(self.step + 1, self.runtime.rank, self.runtime.world_size):
                hang_for_fault_tests(self.step + 1, self.runtime.rank)
            outcome = self.train_step()
            stats.add(outcome)
            self.health.on_step_done(self.step)
            if self.step % training.log_interval_steps == 0 or self.step == training.max_steps:
                ended = self.log_interval(stats, outcome.grad_norm)
                stats = IntervalStats()
                if ended is not None:
                    return ended
            if self.online_eval.due(self.step):
                stats.started_at += self.online_eval.run(self.step)  # not step time
            stopping = self.stop_vote.poll(self.stop.requested)
            if stopping or self.step % self.config.checkpoint.interval_steps == 0:
                if (ended := self.check_skips()) is not None:
                    return ended
                stats.started_at += self.save()  # saving is not step time
                # A signal that came during the save: that checkpoint is the current one.
                stopping = stopping or any_rank_true(self.stop.requested, self.runtime)
            if stopping:
                return self.summarize("preempted", EXIT_SIGTERM, "stopped by signal")
        self.health.set_activity(STOPPING)
        if (ended := self.check_skips()) is not None:
            return ended
        self.save()
        exported = self.export() if self.config.checkpoint.export_diffusers else None
        return self.summarize("completed", EXIT_OK, "", exported=exported)

    def log_interval(self, stats: IntervalStats, grad_norm: torch.Tensor) -> RunSummary | None:
        """Report the interval to the sinks; a summary if the run must end here."""
        step_report = self.report(stats, grad_norm, self.c.loader.epoch)
        if self.runtime.is_main:
            for sink in self.sinks:
                sink(step_report)
            if step_report.skipped_steps:
                log.warning(
                    "skipped %d non-finite steps of the last %d (step %d): gradient norm NaN/inf",
                    step_report.skipped_steps,
                    stats.num_steps,
                    self.step,
                )
        if (ended := self.check_skips()) is not None:
            return ended
        if not math.isfinite(step_report.loss) and step_report.skipped_steps < stats.num_steps:
            message = f"non-finite loss at step {self.step}"
            return self.summarize("failed", EXIT_NONFINITE_LOSS, message, FAILURE_NONFINITE)
        return None

    def check_skips(self) -> RunSummary | None:
        message = self.health.check_skips(self.step, self.last_checkpoint)
        if message is None:
            return None
        return self.summarize("failed", EXIT_NONFINITE_LOSS, message, FAILURE_NONFINITE)

    def export(self) -> str:
        destination = export_path(self.config.checkpoint.uri, self.step)
        export_diffusers(
            self.c.unet,
            self.c.ema,
            self.config.model,
            destination,
            self.runtime,
        )
        log.info("exported the diffusers pipeline folder to %s", destination)
        return destination

    def summarize(
        self,
        status: str,
        exit_code: int,
        message: str,
        failure_class: str | None = None,
        exported: str | None = None,
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
            failure_class=failure_class,
            last_checkpoint_step=self.last_checkpoint_step,
        )


def configure_backends(runtime: Runtime) -> None:
    if runtime.is_main:
        backend = torch.distributed.get_backend()
        log.info(
            "world size %d on %s, process group backend %s",
            runtime.world_size,
            runtime.device,
            backend,
        )
    if runtime.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def run_training(
    config: TrainerConfig,
    stop: StopRequest,
    sinks: list[StepSink] | None = None,
    telemetry: TrainerTelemetry | None = None,
    on_failure: Callable[[RunSummary], None] | None = None,
) -> RunSummary:
    """Set up the process group, train, tear down; returns this rank's summary.
    `on_failure` receives the summary of an uncaught error in the loop (where it got to)
    before the error propagates."""
    runtime = init_runtime()
    try:
        return train_on(
            runtime, config, stop, sinks or [log_step], telemetry, on_failure=on_failure
        )
    finally:
        gc.collect()  # release the dataset's shared memory before the process group goes
        shutdown_runtime()


def train_on(
    runtime: Runtime,
    config: TrainerConfig,
    stop: StopRequest,
    sinks: list[StepSink],
    telemetry: TrainerTelemetry | None = None,
    *,
    on_failure: Callable[[RunSummary], None] | None = None,
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
    loop = TrainingLoop(
        config,
        runtime,
        components,
        stop,
        sinks,
        telemetry=telemetry,
        settings=read_resilience_settings(),
        faults=read_fault_injection(),
    )
    try:
        loop.resume()
        return loop.run()
    except Exception as error:
        if on_failure is not None:
            message = f"{type(error).__name__}: {error}"[:1000]
            on_failure(loop.summarize("failed", EXIT_ERROR, message, FAILURE_ERROR))
        raise
