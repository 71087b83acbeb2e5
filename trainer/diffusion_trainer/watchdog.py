"""What the loop is doing (its activity) and the hang watchdog that watches it.

A rank stuck in a collective or a driver call never returns to Python, so nothing in the loop
can notice. A daemon thread on every rank does: while the activity is `training`, no
optimizer step for `DTJ_HANG_TIMEOUT_S` means a hang. It then writes the stacks of every
thread of the process to stderr (where the rank is stuck), lets local rank 0 write the pod's
termination summary, and exits with code 4 without unwinding (unwinding would wait on the
stuck call). Starting (loading, compiling, the first step), checkpointing and evaluating may
legitimately take long and never count; the clock restarts when training resumes.

A rank that waits on a hung peer may be stopped before its own watchdog fires (the operator
restarts the gang as soon as one rank reports the hang). So past half the timeout without a
step, a SIGTERM also writes this rank's stacks (faulthandler, in C: it works while the main
thread is stuck) before the usual stop; the next step disarms it.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from diffusion_trainer.report import EXIT_HANG

STARTING = "starting"
TRAINING = "training"
CHECKPOINTING = "checkpointing"
EVALUATING = "evaluating"
STOPPING = "stopping"
ACTIVITIES = (STARTING, TRAINING, CHECKPOINTING, EVALUATING, STOPPING)

# Called on the watchdog thread with (step, idle seconds) just before the process exits.
HangHandler = Callable[[int, float], None]


class HangWatchdog:
    def __init__(self, timeout_s: float, rank: int, on_hang: HangHandler | None = None) -> None:
        self.timeout_s = timeout_s
        self.rank = rank
        self.on_hang = on_hang
        self.activity = STARTING
        self.step = 0
        self.armed_at_s = time.monotonic()
        self._lock = threading.Lock()
        self._stacks_on_sigterm = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="dtj-hang-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and let go of the loop: a handler still referenced from the watchdog
        thread would keep the loop, and with it the data loader's worker processes, alive,
        and the process would hang at exit waiting for them."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.on_hang = None
        self._disarm_sigterm_stacks()

    def set_activity(self, activity: str) -> None:
        with self._lock:
            if activity != self.activity:
                self.activity = activity
                self.armed_at_s = time.monotonic()

    def on_step(self, step: int) -> None:
        with self._lock:
            self.step = step
            self.armed_at_s = time.monotonic()
        self._disarm_sigterm_stacks()

    def idle_training_s(self) -> float | None:
        """Seconds since the last step while training; None in any other activity."""
        with self._lock:
            if self.activity != TRAINING:
                return None
            return time.monotonic() - self.armed_at_s

    def _watch(self) -> None:
        poll_s = min(max(self.timeout_s / 10, 0.05), 1.0)
        while not self._stopped.wait(poll_s):
            idle_s = self.idle_training_s()
            if idle_s is not None and idle_s > self.timeout_s / 2:
                self._arm_sigterm_stacks()
            if idle_s is not None and idle_s > self.timeout_s:
                self._fire(idle_s)

    def _arm_sigterm_stacks(self) -> None:
        with self._lock:
            if self._stacks_on_sigterm:
                return
            self._stacks_on_sigterm = True
        # chain=True: the stop handler (preemption.StopRequest) still runs afterwards.
        faulthandler.register(signal.SIGTERM, file=sys.stderr, all_threads=True, chain=True)

    def _disarm_sigterm_stacks(self) -> None:
        with self._lock:
            if not self._stacks_on_sigterm:
                return
            self._stacks_on_sigterm = False
        faulthandler.unregister(signal.SIGTERM)

    def _fire(self, idle_s: float) -> None:
        step = self.step
        sys.stderr.write(
            f"hang: no step for {idle_s:.1f} s at step {step}; stacks of rank {self.rank} follow\n"
        )
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        try:
            if self.on_hang is not None:
                self.on_hang(step, idle_s)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_HANG)


def install_stack_dump_signal() -> None:
    """`kill -USR1 <pid>` writes the stacks of all threads to stderr, without stopping."""
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
