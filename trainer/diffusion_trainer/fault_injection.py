"""Test hooks that inject faults, for the fault-tolerance tests only; all off by default.

- `DTJ_FAULT_SAVE_DELAY_S` (float): rank 0 sleeps this long in every checkpoint save, after the
  shards and the trainer state are written and before the commit marker, so a test can signal
  a run during a long save and check that the checkpoint still commits.
- `DTJ_FAULT_NAN_STEPS` ("a-b", inclusive): the loss of the steps that read the batches of
  steps a..b of the job's first pass is multiplied by NaN before backward, so their gradients
  are truly non-finite. It is keyed on the data position (the data step: the optimizer step
  plus the steps skipped by DTJ_DATA_SKIP_TO_STEP), not on the step counter: after a rollback
  with DTJ_DATA_SKIP_TO_STEP=b the same step numbers read other batches and train normally.
- `DTJ_FAULT_HANG_AT_STEP` ("N" or "N:R", N >= 2): rank R (default: the last rank) sleeps
  forever before optimizer step N, as a rank stuck in a driver call would; its watchdog (if
  DTJ_HANG_TIMEOUT_S is set) dumps the stack of the sleep and exits. Steps before the first
  completed one never count as a hang, hence N >= 2.
- `DTJ_FAULT_ATTEMPT` (int): the faults above apply only in this attempt (DTJ_ATTEMPT), so
  that a test can watch the next attempt recover.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

from diffusion_trainer.config import ConfigError

log = logging.getLogger("diffusion_trainer")


@dataclass(frozen=True)
class FaultInjection:
    nan_steps: tuple[int, int] | None = None
    hang_at_step: int | None = None
    hang_rank: int | None = None  # None: the last rank

    def poisons(self, data_step: int) -> bool:
        return self.nan_steps is not None and self.nan_steps[0] <= data_step <= self.nan_steps[1]

    def hangs(self, step: int, rank: int, world_size: int) -> bool:
        hang_rank = world_size - 1 if self.hang_rank is None else self.hang_rank
        return step == self.hang_at_step and rank == hang_rank


def parse_step_range(name: str, value: str) -> tuple[int, int]:
    first, _, last = value.partition("-")
    try:
        bounds = (int(first), int(last or first))
    except ValueError:
        bounds = (0, -1)
    if not 1 <= bounds[0] <= bounds[1]:
        raise ConfigError(f"{name}={value!r} must be a step range like '5-9' (inclusive, >= 1)")
    return bounds


def parse_hang_at_step(value: str) -> tuple[int, int | None]:
    step, _, rank = value.partition(":")
    try:
        parsed = (int(step), int(rank) if rank else None)
    except ValueError:
        parsed = (0, None)
    if parsed[0] < 2 or (parsed[1] is not None and parsed[1] < 0):
        raise ConfigError(f"DTJ_FAULT_HANG_AT_STEP={value!r} must be 'N' or 'N:RANK' with N >= 2")
    return parsed


def faults_apply(env: Mapping[str, str]) -> bool:
    """False when DTJ_FAULT_ATTEMPT names another attempt than this one."""
    wanted = env.get("DTJ_FAULT_ATTEMPT", "").strip()
    if not wanted:
        return True
    if not wanted.isdigit():
        raise ConfigError(f"DTJ_FAULT_ATTEMPT={wanted!r} must be an attempt number")
    return wanted == env.get("DTJ_ATTEMPT", "1").strip()


def read_fault_injection(env: Mapping[str, str] | None = None) -> FaultInjection:
    env = os.environ if env is None else env
    nan_steps = env.get("DTJ_FAULT_NAN_STEPS", "").strip()
    hang = env.get("DTJ_FAULT_HANG_AT_STEP", "").strip()
    hang_at_step, hang_rank = parse_hang_at_step(hang) if hang else (None, None)
    read_save_delay_s(env)  # checked here, read at every save
    if not faults_apply(env):
        return FaultInjection()
    return FaultInjection(
        nan_steps=parse_step_range("DTJ_FAULT_NAN_STEPS", nan_steps) if nan_steps else None,
        hang_at_step=hang_at_step,
        hang_rank=hang_rank,
    )


def read_save_delay_s(env: Mapping[str, str] | None = None) -> float:
    env = os.environ if env is None else env
    value = env.get("DTJ_FAULT_SAVE_DELAY_S", "").strip()
    try:
        delay_s = float(value) if value else 0.0
    except ValueError:
        delay_s = -1.0
    if not 0.0 <= delay_s < float("inf"):
        raise ConfigError(f"DTJ_FAULT_SAVE_DELAY_S={value!r} must be a number of seconds >= 0")
    return delay_s if faults_apply(env) else 0.0


def delay_commit_for_fault_tests(step: int) -> None:
    """Fault-injection test hook: hold a checkpoint's commit for DTJ_FAULT_SAVE_DELAY_S."""
    delay_s = read_save_delay_s()
    if delay_s > 0:
        log.warning("fault injection: holding the commit of step %d for %.1f s", step, delay_s)
        time.sleep(delay_s)


def hang_for_fault_tests(step: int, rank: int) -> None:
    """Fault-injection test hook: never return, as a rank stuck in a driver call."""
    log.warning("fault injection: rank %d hangs before step %d", rank, step)
    while True:
        time.sleep(3600)
