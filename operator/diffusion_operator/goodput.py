"""Goodput bookkeeping in the job status (pure): GPU-seconds allocated, kept and lost, and the
time to detect and to recover of each incident.

Written only when an attempt ends or recovers, never per pass: a running attempt's share is
`now - attemptRunningTime` x GPUs, which any reader can add.
"""

from __future__ import annotations

from datetime import datetime

from diffusion_operator.failures import Failure
from diffusion_operator.status_types import DiffusionTrainingJobStatus, Goodput, Incident
from diffusion_operator.timefmt import format_time, parse_time

MAX_INCIDENTS = 10


def _seconds(later: datetime, earlier: datetime | None) -> float:
    return max((later - earlier).total_seconds(), 0.0) if earlier else 0.0


def _store(status: DiffusionTrainingJobStatus, goodput: Goodput) -> None:
    allocated = round(goodput.allocated_gpu_seconds, 1)
    productive = round(goodput.productive_gpu_seconds, 1)
    lost = round(goodput.lost_gpu_seconds, 1)
    # Lost = work redone (inside allocated) + GPUs waiting for the next attempt (outside it).
    paid = allocated + lost - (allocated - productive)
    status.goodput = Goodput(
        allocated_gpu_seconds=allocated,
        productive_gpu_seconds=productive,
        lost_gpu_seconds=lost,
        ratio=round(productive / paid, 4) if paid > 0 else None,
    )


def close_run(
    status: DiffusionTrainingJobStatus, now: datetime, num_gpus: int, failure: Failure | None
) -> float:
    """The current attempt stops: add its GPU time; on a failure, the work done since the last
    committed checkpoint is lost (the next attempt repeats it). Returns the lost GPU-seconds."""
    started = parse_time(status.attempt_running_time)
    if started is None:
        return 0.0
    ran_s = _seconds(now, started)
    goodput = (status.goodput or Goodput()).model_copy()
    goodput.allocated_gpu_seconds += ran_s * num_gpus
    lost_s = 0.0
    if failure is not None:
        checkpoint_at = parse_time(status.checkpoint.time if status.checkpoint else None)
        kept_until = max(started, checkpoint_at) if checkpoint_at else started
        ended = min(failure.failed_at or now, now)
        lost_s = min(_seconds(ended, kept_until), ran_s) * num_gpus
    goodput.productive_gpu_seconds += ran_s * num_gpus - lost_s
    goodput.lost_gpu_seconds += lost_s
    _store(status, goodput)
    return lost_s


def open_incident(
    status: DiffusionTrainingJobStatus, failure: Failure, now: datetime, lost_gpu_s: float
) -> Incident:
    failed_at = failure.failed_at or now
    incident = Incident(
        attempt=status.attempt,
        failure_class=failure.failure_class,
        reason=failure.reason,
        failed_at=format_time(failed_at),
        detected_at=format_time(now),
        detect_seconds=round(_seconds(now, failed_at), 1),
        lost_gpu_seconds=round(lost_gpu_s, 1),
    )
    status.incidents = [*(status.incidents or []), incident][-MAX_INCIDENTS:]
    return incident


def close_incident(
    status: DiffusionTrainingJobStatus, now: datetime, num_gpus: int
) -> Incident | None:
    """The next attempt runs: the open incident has recovered; the GPUs waited meanwhile."""
    incidents = list(status.incidents or [])
    if not incidents or incidents[-1].recovered_at:
        return None
    recover_s = _seconds(now, parse_time(incidents[-1].detected_at))
    incident = incidents[-1].model_copy(
        update={
            "recovered_at": format_time(now),
            "recover_seconds": round(recover_s, 1),
            "lost_gpu_seconds": round(
                (incidents[-1].lost_gpu_seconds or 0.0) + recover_s * num_gpus, 1
            ),
        }
    )
    status.incidents = [*incidents[:-1], incident]
    goodput = (status.goodput or Goodput()).model_copy()
    goodput.lost_gpu_seconds += recover_s * num_gpus
    _store(status, goodput)
    return incident
