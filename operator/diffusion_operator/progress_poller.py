"""Rank 0's progress of every running job, read concurrently off the passes' path.

Every `interval_s` the poller reads all running jobs' endpoints at once (bounded threads, one
overall deadline), keeps the latest validated reading per job, and wakes a job's pass only
when its reading changed. A pass folds the kept reading into status: it never waits on the
network while it holds a job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from diffusion_operator import names
from diffusion_operator.cache import ClusterCache
from diffusion_operator.progress_client import UNREACHABLE, fetch_progress
from diffusion_operator.progress_reading import ProgressReading, parse_reading

log = logging.getLogger("diffusion_operator.progress")


@dataclass(frozen=True)
class Target:
    key: str
    attempt: int
    host: str


@dataclass(frozen=True)
class Reading:
    attempt: int
    values: ProgressReading | None  # None: rank 0 did not answer


class ProgressPoller:
    def __init__(
        self,
        cache: ClusterCache,
        *,
        interval_s: float,
        address: str,
        on_changed: Callable[[str], None],
        is_active: Callable[[], bool] = lambda: True,
        max_threads: int = 32,
    ) -> None:
        self.cache, self.interval_s, self.address = cache, interval_s, address
        self.on_changed, self.is_active = on_changed, is_active
        self._pool = ThreadPoolExecutor(max_threads, thread_name_prefix="dtj-progress")
        self._readings: dict[str, Reading] = {}
        self._warned: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def reading_for(self, key: str, attempt: int) -> Reading | None:
        """The latest reading of this attempt's rank 0; None before the first one."""
        with self._lock:
            reading = self._readings.get(key)
        return reading if reading is not None and reading.attempt == attempt else None

    def forget(self, key: str) -> None:
        with self._lock:
            self._readings.pop(key, None)
            self._warned.pop(key, None)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            if not self.is_active():
                continue
            try:
                self.poll_once(deadline_s=self.interval_s)
            except Exception:  # the poller must outlive bugs: the next round retries
                log.exception("progress poll failed")

    def poll_once(self, deadline_s: float) -> None:
        targets = self.targets()
        started = time.monotonic()
        futures = {self._pool.submit(fetch_progress, t.host): t for t in targets}
        done, late = wait(futures, timeout=deadline_s)
        for future in late:
            future.cancel()
        for future in done:
            self.keep(futures[future], future.result())
        for future in late:
            self.keep(futures[future], UNREACHABLE)
        log.debug("read %d progress endpoints in %.2fs", len(targets), time.monotonic() - started)

    def keep(self, target: Target, raw: Any) -> None:
        values = None
        if raw is not UNREACHABLE:
            values, problems = parse_reading(raw)
            self.warn_once(target.key, problems)
        reading = Reading(target.attempt, values)
        with self._lock:
            changed = self._readings.get(target.key) != reading
            self._readings[target.key] = reading
        if changed:
            self.on_changed(target.key)

    def warn_once(self, key: str, problems: list[str]) -> None:
        """A trainer that sends a bad field sends it every time: say so once per change."""
        if problems and self._warned.get(key) != problems:
            log.warning("%s: dropped malformed progress fields: %s", key, "; ".join(problems))
        self._warned[key] = problems

    def targets(self) -> list[Target]:
        """Running jobs whose current attempt's rank 0 runs."""
        found = []
        for body in self.cache.training_jobs.values():
            status = body.get("status") or {}
            if status.get("phase") != "Running" or not isinstance(status.get("attempt"), int):
                continue
            meta = body["metadata"]
            key = f"{meta['namespace']}/{meta['name']}"
            host = self.rank0_host(meta, status["attempt"])
            if host is not None:
                found.append(Target(key, status["attempt"], host))
        return found

    def rank0_host(self, meta: dict[str, Any], attempt: int) -> str | None:
        observed = self.cache.observe(meta["namespace"], meta["name"], meta["uid"])
        for pod in observed.pods_of(attempt):
            if pod.index == 0 and pod.phase == "Running" and not pod.deleting:
                if self.address == "service-dns" or not pod.pod_ip:
                    return names.master_address(meta["name"], attempt, meta["namespace"])
                return pod.pod_ip
        return None
