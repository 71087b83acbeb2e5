"""What the loop reports: per-step records (the hook for metrics exporters), log lines, and the
final JSON summary written to the pod's termination message."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

log = logging.getLogger("diffusion_trainer")

DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")
# Kubernetes keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG_ERROR = 2
EXIT_NONFINITE_LOSS = 3
EXIT_HANG = 4
EXIT_SIGTERM = 143

# `failureClass` of the summary: what the operator decides a restart on (null: no failure).
FAILURE_CONFIG = "ConfigError"
FAILURE_NONFINITE = "NonFinite"
FAILURE_HANG = "Hang"
FAILURE_ERROR = "Error"


@dataclass
class StepReport:
    """One logged interval, emitted on rank 0 at every log step."""

    step: int
    max_steps: int
    loss: float
    lr: float
    images_per_s: float
    mfu: float | None
    data_wait_s: float
    optimizer_s: float  # clip + optimizer step + EMA, per step
    step_time_s: float
    grad_norm: float | None
    epoch: int
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite gradient norm


StepSink = Callable[[StepReport], None]


def format_step_line(report: StepReport) -> str:
    mfu = "n/a" if report.mfu is None else f"{100 * report.mfu:.1f}%"
    grad = "n/a" if report.grad_norm is None else f"{report.grad_norm:.4g}"
    return (
        f"step={report.step}/{report.max_steps} loss={report.loss:.6f} lr={report.lr:.3e} "
        f"images_per_s={report.images_per_s:.2f} mfu={mfu} data_wait_s={report.data_wait_s:.4f} "
        f"optimizer_s={report.optimizer_s:.4f} step_time_s={report.step_time_s:.4f} "
        f"grad_norm={grad} epoch={report.epoch}"
    )


def log_step(report: StepReport) -> None:
    log.info(format_step_line(report))


@dataclass
class RunSummary:
    status: str  # completed | preempted | failed
    exit_code: int
    step: int
    max_steps: int
    final_loss: float | None
    images_per_second: float | None
    last_checkpoint: str | None
    exported: str | None
    message: str = ""
    failure_class: str | None = None  # FAILURE_*; None on success and on preemption
    last_checkpoint_step: int | None = None  # the step of last_checkpoint

    def to_json(self) -> str:
        # NaN/inf are not JSON: a non-finite loss or throughput is written as null.
        camel = {to_camel(key): finite_or_none(value) for key, value in asdict(self).items()}
        return json.dumps(camel, separators=(",", ":"), allow_nan=False)

    def to_termination_message(self) -> str:
        """The JSON within Kubernetes' limit: the message is shortened, never the JSON cut."""
        summary, text = self, self.to_json()
        while len(text.encode()) > TERMINATION_MESSAGE_LIMIT and summary.message:
            overflow = len(text.encode()) - TERMINATION_MESSAGE_LIMIT
            kept = summary.message[: max(len(summary.message) - overflow - 3, 0)]
            summary = replace(summary, message=kept and kept + "...")
            text = summary.to_json()
        return text


def finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def termination_log_path() -> Path | None:
    """DTJ_TERMINATION_LOG if set, else /dev/termination-log when Kubernetes mounted it."""
    override = os.environ.get("DTJ_TERMINATION_LOG")
    if override:
        return Path(override)
    return DEFAULT_TERMINATION_LOG if DEFAULT_TERMINATION_LOG.exists() else None


def write_summary(summary: RunSummary) -> None:
    text = summary.to_termination_message()
    log.info("summary %s", text)
    path = termination_log_path()
    if path is None:
        return
    try:
        path.write_text(text)
    except OSError as error:
        log.warning("cannot write termination message to %s: %s", path, error)
