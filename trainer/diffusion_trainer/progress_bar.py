"""Progress of long dataset commands (`dtj data synth|convert|precompute`) on stderr: a live bar
with the rate on a terminal, a plain line every 30 s where stderr is a log (a pod, CI)."""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


def progress_bar(description: str, total: int | None = None, unit: str = " samples") -> tqdm:
    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=description,
        unit=unit,
        file=sys.stderr,
        mininterval=0.2 if interactive else LOG_INTERVAL_S,
        ascii=not interactive,
        dynamic_ncols=interactive,
    )
