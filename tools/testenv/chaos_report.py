"""Where a chaos case's incidents go while their timings are measured (DTJ_CHAOS_REPORT, set by
tools/bench/chaos_times.py); a no-op otherwise. Tests assert behaviour, never these numbers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def record_incidents(case: str, status: dict[str, Any]) -> None:
    target = os.environ.get("DTJ_CHAOS_REPORT")
    if not target:
        return
    line = {"case": case, "phase": status.get("phase"), "incidents": status.get("incidents") or []}
    with Path(target).open("a", encoding="utf-8") as report:
        report.write(json.dumps(line) + "\n")
