"""SIGTERM handling: finish the current step, write a final checkpoint, exit 143.

Kubernetes sends SIGTERM to the container's PID 1 (torchrun), which forwards it to every
worker and waits (--shutdown-timeout, default 30 s) before SIGKILL. The handler only sets a
flag; the loop checks it once per optimizer step on all ranks together, so every rank stops
after the same step and the final checkpoint is consistent.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Any

log = logging.getLogger("diffusion_trainer")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            log.warning("received %s: stopping after this step", signal.Signals(signum).name)
        self.signum = signum
