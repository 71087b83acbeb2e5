"""Time spans of device work without a host sync per step.

On CUDA the host runs ahead of the device, so wall-clock timing of a region measures only its
kernel launches: CUDA events recorded around the region are read once per log interval, after the
loss is synchronised anyway. On CPU the work is synchronous and the wall clock is exact.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class SpanTimer:
    def __init__(self, device: torch.device) -> None:
        self._use_events = device.type == "cuda"
        self._pending: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._host_s = 0.0

    @contextmanager
    def span(self) -> Iterator[None]:
        if not self._use_events:
            started = time.perf_counter()
            yield
            self._host_s += time.perf_counter() - started
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        self._pending.append((start, end))

    def take_total_s(self) -> float:
        """Seconds inside spans since the previous call (waits for the last span to finish)."""
        total_s, self._host_s = self._host_s, 0.0
        if self._pending:
            self._pending[-1][1].synchronize()
            total_s += sum(start.elapsed_time(end) for start, end in self._pending) / 1000.0
            self._pending.clear()
        return total_s
