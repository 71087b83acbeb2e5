"""Fault-tolerance settings, from environment variables the operator sets on the workers.

Torch-free, so preflight checks them before any process group exists (exit code 2 on a bad
value):

- `DTJ_MAX_NONFINITE_SKIPS` (int >= 0, default 5): optimizer steps whose global gradient norm
  is NaN/inf are skipped on the device; this many consecutive skips end the run with exit
  code 3. 0 (like 1) ends the run at the first non-finite gradient.
- `DTJ_ROLLBACK_CHECKPOINTS` (int >= 1): resume from the Nth committed checkpoint before the
  newest in the job's own store, uncommitting the newer ones (RESUME_FROM is ignored). Once
  per attempt (DTJ_ATTEMPT): a restarted process of the same attempt resumes from the newest.
- `DTJ_DATA_SKIP_TO_STEP` (int >= 0): after loading, skip the data up to the batches that step
  S+1 would have read (the step counter and the LR schedule continue from the checkpoint).
- `DTJ_HANG_TIMEOUT_S` (float > 0): while training, a rank that completes no optimizer step
  for this long dumps its stacks and exits with code 4 (unset: no watchdog).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from diffusion_trainer.config import ConfigError

DEFAULT_MAX_NONFINITE_SKIPS = 5


@dataclass(frozen=True)
class ResilienceSettings:
    max_nonfinite_skips: int = DEFAULT_MAX_NONFINITE_SKIPS
    rollback_checkpoints: int | None = None
    data_skip_to_step: int | None = None
    hang_timeout_s: float | None = None

    @property
    def nonfinite_streak_limit(self) -> int:
        """Consecutive skipped steps that end the run (0 means the first one does)."""
        return max(self.max_nonfinite_skips, 1)


def read_int(env: Mapping[str, str], name: str, minimum: int) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")
    return number


def read_positive_float(env: Mapping[str, str], name: str) -> float | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not number > 0.0 or number == float("inf"):
        raise ConfigError(f"{name}={value!r} must be a number of seconds > 0")
    return number


def read_resilience_settings(env: Mapping[str, str] | None = None) -> ResilienceSettings:
    env = os.environ if env is None else env
    max_skips = read_int(env, "DTJ_MAX_NONFINITE_SKIPS", minimum=0)
    return ResilienceSettings(
        max_nonfinite_skips=DEFAULT_MAX_NONFINITE_SKIPS if max_skips is None else max_skips,
        rollback_checkpoints=read_int(env, "DTJ_ROLLBACK_CHECKPOINTS", minimum=1),
        data_skip_to_step=read_int(env, "DTJ_DATA_SKIP_TO_STEP", minimum=0),
        hang_timeout_s=read_positive_float(env, "DTJ_HANG_TIMEOUT_S"),
    )
