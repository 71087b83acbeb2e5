"""What the loop reports: per-step records (the hook for metrics exporters), log lines, and the
final JSON summary written to the pod's termination message."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("diffusion_trainer")

DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")
# Kubernetes keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096

EXIT_OK = 0
EXIT_CONFIG_ERROR = 2
EXIT_NONFINITE_LOSS = 3
EXIT_SIGTERM = 143


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

    def to_json(self) -> str:
        camel = {to_camel(key): value for key, value in asdict(self).items()}
        return json.dumps(camel, separators=(",", ":"))


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
    text = summary.to_json()
    log.info("summary %s", text)
    path = termination_log_path()
    if path is None:
        return
    try:
        path.write_text(text[:TERMINATION_MESSAGE_LIMIT])
    except OSError as error:
        log.warning("cannot write termination message to %s: %s", path, error)
