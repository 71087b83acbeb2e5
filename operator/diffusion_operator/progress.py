"""Training progress from rank 0's JSON endpoint, folded into the job status (pure)."""

from __future__ import annotations

import math
from typing import Any

from diffusion_operator.status_types import CheckpointStatus, EvalStatus


def format_eta(seconds: float | None) -> str | None:
    if seconds is None or seconds < 0:
        return None
    total_min = int(seconds // 60)
    days, rest_min = divmod(total_min, 24 * 60)
    hours, minutes = divmod(rest_min, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{int(seconds % 60):02d}s"


def finite(value: Any) -> float | None:
    """A number JSON and the API server accept: Infinity and NaN would fail the status patch."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


ACTIVITIES = ("starting", "training", "checkpointing", "evaluating", "stopping")


def progress_from_reading(reading: dict[str, Any], now: str) -> dict[str, Any]:
    """status.progress from a fresh /progress reading."""
    activity = reading.get("activity")
    eta_s = finite(reading.get("etaSeconds"))
    images = finite(reading.get("imagesPerSecond"))
    loss = finite(reading.get("loss"))
    return {
        "step": reading.get("step"),
        "totalSteps": reading.get("totalSteps"),
        "imagesPerSecond": None if images is None else round(images, 2),
        "loss": None if loss is None else round(loss, 5),
        "etaSeconds": None if eta_s is None else int(eta_s),
        "eta": format_eta(eta_s),
        "activity": activity if activity in ACTIVITIES else None,
        "updatedAt": now,
        "stepAdvancedAt": now,
        "stale": False,
    }


def fold_reading(current: dict[str, Any] | None, fresh: dict[str, Any]) -> dict[str, Any]:
    """The fresh progress, or the current one if only the read time differs: a status write
    (and a watch event for every `kubectl get -w`) only when something a user sees changed.
    `stepAdvancedAt` moves only when the step or the activity changes (the hang clock)."""
    if not current:
        return fresh
    if (current.get("step"), current.get("activity")) == (fresh.get("step"), fresh.get("activity")):
        fresh = {**fresh, "stepAdvancedAt": current.get("stepAdvancedAt") or fresh["updatedAt"]}
    clocks = {"updatedAt": None, "stepAdvancedAt": None}
    if {**current, **clocks} == {**fresh, **clocks}:
        return current
    return fresh


def keep_last_good(current: dict[str, Any] | None, fresh: dict[str, Any]) -> dict[str, Any]:
    """A reading with fields dropped as malformed (or absent) keeps their last good values."""
    if not current:
        return fresh
    return {key: current.get(key) if value is None else value for key, value in fresh.items()}


def mark_stale(progress: dict[str, Any] | None) -> dict[str, Any] | None:
    """Keep the last known values, flagged; never an error."""
    if not progress or progress.get("stale"):
        return progress
    return {**progress, "stale": True}


def newer_checkpoint(
    current: CheckpointStatus | None, reading: dict[str, Any]
) -> CheckpointStatus | None:
    """status.checkpoint from the reading, if it names a newer committed checkpoint."""
    latest = reading.get("checkpoint")
    if not isinstance(latest, dict):
        return None
    step, uri, time = latest.get("step"), latest.get("uri"), latest.get("time")
    if not isinstance(uri, str) or not uri or isinstance(step, bool) or not isinstance(step, int):
        return None
    if current is not None and current.step is not None and current.step >= step:
        return None
    return CheckpointStatus(latest_uri=uri, step=step, time=time if isinstance(time, str) else None)


def newer_eval(current: EvalStatus | None, reading: dict[str, Any]) -> EvalStatus | None:
    """status.eval from the reading, if it reports an evaluation status does not show yet."""
    latest = reading.get("eval")
    if not isinstance(latest, dict):
        return None
    fresh = EvalStatus.model_validate(latest)
    if current is not None and (current.step, current.time) == (fresh.step, fresh.time):
        return None
    return fresh
