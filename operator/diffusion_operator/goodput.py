"""Goodput bookkeeping in the job status (pure): GPU-seconds allocated, kept and lost, and the
time to detect and to recover of each incident.

Written only when an attempt ends or recovers, never per pass: a running attempt's share is
`now - attemptRunningTime` x GPUs, which any reader can add.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from diffusion_operator.failures import Failure
from diffusion_operator.timefmt import format_time, parse_time

MAX_INCIDENTS = 10


def _seconds(later: datetime, earlier: datetime | None) -> float:
    return max((later - earlier).total_seconds(), 0.0) if earlier else 0.0


def _goodput(status: dict[str, Any]) -> dict[str, Any]:
    current = status.get("goodput") or {}
    return {
        "allocatedGpuSeconds": float(current.get("allocatedGpuSeconds") or 0.0),
        "productiveGpuSeconds": float(current.get("productiveGpuSeconds") or 0.0),
        "lostGpuSeconds": float(current.get("lostGpuSeconds") or 0.0),
    }


def _store(status: dict[str, Any], goodput: dict[str, Any]) -> None:
    rounded: dict[str, Any] = {key: round(value, 1) for key, value in goodput.items()}
    # Lost = work redone (inside allocated) + GPUs waiting for the next attempt (outside it).
    lost_work = rounded["allocatedGpuSeconds"] - rounded["productiveGpuSeconds"]
    paid = rounded["allocatedGpuSeconds"] + rounded["lostGpuSeconds"] - lost_work
    rounded["ratio"] = round(rounded["productiveGpuSeconds"] / paid, 4) if paid > 0 else None
    status["goodput"] = rounded


def close_run(
    status: dict[str, Any], now: datetime, num_gpus: int, failure: Failure | None
) -> float:
    """The current attempt stops: add its GPU time; on a failure, the work done since the last
    committed checkpoint is lost (the next attempt repeats it). Returns the lost GPU-seconds."""
    started = parse_time(status.get("attemptRunningTime"))
    if started is None:
        return 0.0
    ran_s = _seconds(now, started)
    goodput = _goodput(status)
    goodput["allocatedGpuSeconds"] += ran_s * num_gpus
    lost_s = 0.0
    if failure is not None:
        checkpoint_at = parse_time((status.get("checkpoint") or {}).get("time"))
        kept_until = max(started, checkpoint_at) if checkpoint_at else started
        ended = min(failure.failed_at or now, now)
        lost_s = min(_seconds(ended, kept_until), ran_s) * num_gpus
    goodput["productiveGpuSeconds"] += ran_s * num_gpus - lost_s
    goodput["lostGpuSeconds"] += lost_s
    _store(status, goodput)
    return lost_s


def open_incident(
    status: dict[str, Any], failure: Failure, now: datetime, lost_gpu_s: float
) -> dict[str, Any]:
    incident = {
        "attempt": int(status.get("attempt", 0)),
        "class": failure.failure_class,
        "reason": failure.reason,
        "failedAt": format_time(failure.failed_at or now),
        "detectedAt": format_time(now),
        "detectSeconds": round(_seconds(now, failure.failed_at or now), 1),
        "lostGpuSeconds": round(lost_gpu_s, 1),
    }
    status["incidents"] = [*(status.get("incidents") or []), incident][-MAX_INCIDENTS:]
    return incident


def close_incident(status: dict[str, Any], now: datetime, num_gpus: int) -> dict[str, Any] | None:
    """The next attempt runs: the open incident has recovered; the GPUs waited meanwhile."""
    incidents = list(status.get("incidents") or [])
    if not incidents or incidents[-1].get("recoveredAt"):
        return None
    incident = dict(incidents[-1])
    recover_s = _seconds(now, parse_time(incident.get("detectedAt")))
    incident.update(recoveredAt=format_time(now), recoverSeconds=round(recover_s, 1))
    incident["lostGpuSeconds"] = round(incident["lostGpuSeconds"] + recover_s * num_gpus, 1)
    status["incidents"] = [*incidents[:-1], incident]
    goodput = _goodput(status)
    goodput["lostGpuSeconds"] += recover_s * num_gpus
    _store(status, goodput)
    return incident
