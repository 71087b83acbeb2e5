"""One reconcile pass per job at a time, without a pile-up.

Events on a job and its pods arrive in bursts (a 64-worker gang starting is hundreds). A pass
reads everything afresh once it holds the job's lock, so an event that arrives while another
pass for the same job is still waiting for that lock is already covered: it returns at once
instead of occupying a handler thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_locks: dict[str, threading.Lock] = {}
_queued: set[str] = set()
_guard = threading.Lock()


@contextmanager
def exclusive_pass(key: str) -> Iterator[bool]:
    """Yields True while this thread holds the job's lock; False if a queued pass covers it."""
    with _guard:
        covered = key in _queued
        if not covered:
            _queued.add(key)
            lock = _locks.setdefault(key, threading.Lock())
    if covered:
        yield False
        return
    with lock:
        with _guard:
            _queued.discard(key)
        yield True


def forget_lock(key: str) -> None:
    """A deleted job's lock, unless a pass holds it or waits for it: a job re-created under
    the same name must not get a second lock while that pass runs."""
    with _guard:
        lock = _locks.get(key)
        if lock is not None and not lock.locked() and key not in _queued:
            del _locks[key]
