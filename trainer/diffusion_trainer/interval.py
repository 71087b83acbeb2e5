"""What the loop accumulates between two log lines: each optimizer step's outcome, summed on the
device so that only the log step waits for it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch


@dataclass
class StepOutcome:
    loss: torch.Tensor  # mean over the global batch, this rank's share
    data_wait_s: float
    grad_norm: torch.Tensor
    skipped: torch.Tensor  # 1.0 if the optimizer step was skipped (non-finite gradient norm)


@dataclass
class IntervalStats:
    """Accumulates between two log lines; the sums stay on the device until logged."""

    num_steps: int = 0
    # (loss over the steps that were not skipped, steps not skipped, steps skipped)
    sums: torch.Tensor | None = None
    data_wait_s: float = 0.0
    started_at: float = field(default_factory=time.perf_counter)

    def add(self, outcome: StepOutcome) -> None:
        self.num_steps += 1
        kept = 1.0 - outcome.skipped
        loss = torch.where(kept > 0, outcome.loss, torch.zeros_like(outcome.loss))
        sums = torch.stack([loss, kept, outcome.skipped])
        self.sums = sums if self.sums is None else self.sums + sums
        self.data_wait_s += outcome.data_wait_s
