"""A delaying work queue of job keys: one pass at a time per key, no pile-up, no lost wake-up.

Shaped like client-go's workqueue: a key added many times before a worker takes it is one
item; a key added while a worker holds it waits until that worker is done, then runs once
more (the pass reads everything afresh, so once is enough). `add_after` keeps the earliest
requested time, so a plan's `requeue_after` never postpones an earlier wake-up.
"""

from __future__ import annotations

import heapq
import threading
import time


class WorkQueue:
    def __init__(self) -> None:
        self._due: dict[str, float] = {}  # key -> earliest monotonic time it should run
        self._heap: list[tuple[float, str]] = []  # (due, key); stale entries skipped
        self._processing: set[str] = set()
        self._cond = threading.Condition()
        self._closed = False

    def add(self, key: str) -> None:
        self.add_after(key, 0.0)

    def add_after(self, key: str, delay_s: float) -> None:
        due = time.monotonic() + max(delay_s, 0.0)
        with self._cond:
            current = self._due.get(key)
            if current is not None and current <= due:
                return
            self._due[key] = due
            if key not in self._processing:
                heapq.heappush(self._heap, (due, key))
            self._cond.notify()

    def get(self, timeout_s: float) -> str | None:
        """The next due key, marked as processing; None when nothing came due in time."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                key = self._pop_due(now)
                if key is not None:
                    return key
                wait_s = deadline - now
                if self._heap:
                    wait_s = min(wait_s, self._heap[0][0] - now)
                if deadline <= now:
                    return None
                self._cond.wait(max(wait_s, 0.001))
        return None

    def _pop_due(self, now: float) -> str | None:
        while self._heap and self._heap[0][0] <= now:
            due, key = heapq.heappop(self._heap)
            if self._due.get(key) != due or key in self._processing:
                continue  # superseded by an earlier time, or re-pushed at done()
            del self._due[key]
            self._processing.add(key)
            return key
        return None

    def done(self, key: str) -> None:
        """The worker finished the key; if it was added meanwhile it becomes due again."""
        with self._cond:
            self._processing.discard(key)
            due = self._due.get(key)
            if due is not None:
                heapq.heappush(self._heap, (due, key))
                self._cond.notify()

    def discard(self, key: str) -> None:
        """A deleted job: forget any pending wake-up."""
        with self._cond:
            self._due.pop(key, None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._due)

    def num_due(self) -> int:
        """Keys due now and not held by a worker: the backlog."""
        now = time.monotonic()
        with self._cond:
            due_keys = [k for k, due in self._due.items() if due <= now]
            return len([k for k in due_keys if k not in self._processing])
