"""The job table of `kubectl dtj list` and `watch`: one row per job, from its status."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

COLUMNS = ("NAME", "PHASE", "STEP", "LOSS", "IMG/S", "ETA", "ATTEMPT", "RESTARTS", "CHECKPOINT")


def age_text(timestamp: str | None, now: datetime | None = None) -> str:
    """2d3h, 4h12m, 5m3s or 9s, as kubectl shows ages."""
    if not timestamp:
        return "-"
    started = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int(((now or datetime.now(UTC)) - started).total_seconds())
    days, rest = divmod(max(seconds, 0), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def job_row(job: dict[str, Any], with_namespace: bool, now: datetime | None = None) -> list[str]:
    status = job.get("status") or {}
    progress = status.get("progress") or {}
    step = progress.get("step")
    total = progress.get("totalSteps")
    row = [
        job["metadata"]["name"],
        status.get("phase") or "Pending",
        f"{step}/{total}" if step is not None and total else str(step or "-"),
        f"{progress['loss']:.4g}" if progress.get("loss") is not None else "-",
        f"{progress['imagesPerSecond']:.1f}" if progress.get("imagesPerSecond") else "-",
        progress.get("eta") or "-",
        str(status.get("attempt") or "-"),
        str(status.get("restarts", 0)),
        str((status.get("checkpoint") or {}).get("step", "-")),
    ]
    prefix = [job["metadata"]["namespace"]] if with_namespace else []
    return [*prefix, *row, age_text(job["metadata"].get("creationTimestamp"), now)]


def format_table(jobs: list[dict[str, Any]], with_namespace: bool) -> str:
    header = [*(["NAMESPACE"] if with_namespace else []), *COLUMNS, "AGE"]
    rows = [header] + [job_row(job, with_namespace) for job in jobs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
