"""The training loop's health: optimizer steps skipped for a non-finite gradient norm (a streak
of DTJ_MAX_NONFINITE_SKIPS ends the run, exit 3), the loop's activity as the hang watchdog and
the telemetry see it, and the summary a hang leaves behind (exit 4)."""

from __future__ import annotations

import logging
from functools import partial
from typing import Protocol

import torch

from diffusion_trainer.distributed import Runtime
from diffusion_trainer.metrics import TrainerTelemetry
from diffusion_trainer.optim import SkipCounter
from diffusion_trainer.report import EXIT_HANG, FAILURE_HANG, RunSummary, write_summary
from diffusion_trainer.resilience import ResilienceSettings
from diffusion_trainer.watchdog import STARTING, STOPPING, TRAINING, HangWatchdog

log = logging.getLogger("diffusion_trainer")


class Summarize(Protocol):
    """The loop's summary of the run so far (where it got to, its last loss and checkpoint)."""

    def __call__(
        self, status: str, exit_code: int, message: str, failure_class: str | None = None
    ) -> RunSummary: ...


class LoopHealth:
    def __init__(
        self,
        settings: ResilienceSettings,
        runtime: Runtime,
        summarize: Summarize,
        telemetry: TrainerTelemetry | None = None,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.telemetry = telemetry
        self.skips = SkipCounter(runtime.device)
        self.activity = STARTING
        # `summarize` is not kept here: a loop <-> health cycle would keep the loop, and with it
        # the data loader's workers, alive past the end of training; only the watchdog needs it.
        self.watchdog = self.build_watchdog(summarize)

    def start(self) -> None:
        if self.watchdog is not None:
            self.watchdog.start()

    def stop(self) -> None:
        self.set_activity(STOPPING)
        if self.watchdog is not None:
            self.watchdog.stop()

    def record_skipped(self, skipped: torch.Tensor) -> None:
        """`skipped`: 1.0 if this step was skipped, else 0.0; stays on the device."""
        self.skips.record(skipped)

    def check_skips(self, step: int, last_checkpoint: str | None) -> str | None:
        """At a point where the loop syncs anyway: once a streak of skipped steps reached the
        limit, the reason to end the run before anything is committed after it. Isolated skips
        may be saved: a NaN never reached the weights. Every rank reads the same counts."""
        total, worst = self.skips.read()
        limit = self.settings.nonfinite_streak_limit
        if worst < limit:
            return None
        message = (
            f"non-finite gradient norm at or before step {step}: {worst} consecutive steps "
            f"skipped (DTJ_MAX_NONFINITE_SKIPS={self.settings.max_nonfinite_skips}), {total} in "
            f"all; no checkpoint saved after them, the latest committed one is "
            f"{last_checkpoint or 'none'}"
        )
        log.error(message)
        return message

    def set_activity(self, activity: str) -> None:
        if activity == self.activity:
            return
        self.activity = activity
        if self.watchdog is not None:
            self.watchdog.set_activity(activity)
        if self.telemetry is not None:
            self.telemetry.set_activity(activity)

    def on_step_done(self, step: int) -> None:
        if self.watchdog is not None:
            self.watchdog.on_step(step)
        if self.activity == STARTING:  # compiling and the first step are behind us
            self.set_activity(TRAINING)

    def build_watchdog(self, summarize: Summarize) -> HangWatchdog | None:
        timeout_s = self.settings.hang_timeout_s
        if timeout_s is None:
            return None
        on_hang = None
        if self.runtime.local_rank == 0:
            on_hang = partial(write_hang_summary, summarize, timeout_s)
        return HangWatchdog(timeout_s, self.runtime.rank, on_hang)


def write_hang_summary(summarize: Summarize, timeout_s: float, step: int, idle_s: float) -> None:
    """Called on the watchdog thread of local rank 0 just before it ends the process."""
    message = (
        f"hang: no optimizer step for {idle_s:.0f} s at step {step} "
        f"(DTJ_HANG_TIMEOUT_S={timeout_s:g}); every rank's stacks are in its log"
    )
    write_summary(summarize("failed", EXIT_HANG, message, FAILURE_HANG))
