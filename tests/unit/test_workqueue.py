"""The work queue: one pass per key at a time, no pile-up, the earliest wake-up wins."""

from __future__ import annotations

import threading
import time

from diffusion_operator.workqueue import WorkQueue


def test_a_key_added_many_times_is_one_item():
    queue = WorkQueue()
    for _ in range(5):
        queue.add("ns/a")
    queue.add("ns/b")
    taken = {queue.get(0.1), queue.get(0.1)}
    assert taken == {"ns/a", "ns/b"}
    assert queue.get(0.05) is None


def test_a_key_added_while_held_runs_again_after_done_not_before():
    queue = WorkQueue()
    queue.add("ns/a")
    assert queue.get(0.1) == "ns/a"
    queue.add("ns/a")  # an event while the pass runs
    assert queue.get(0.05) is None  # never two passes of one job at once
    queue.done("ns/a")
    assert queue.get(0.1) == "ns/a"
    queue.done("ns/a")
    assert queue.get(0.05) is None


def test_the_earliest_requested_time_wins():
    queue = WorkQueue()
    queue.add_after("ns/a", 30)
    queue.add_after("ns/a", 0.05)
    queue.add_after("ns/a", 60)  # a later request never postpones an earlier one
    started = time.monotonic()
    assert queue.get(2) == "ns/a"
    assert time.monotonic() - started < 1


def test_a_delayed_key_is_not_due_before_its_time():
    queue = WorkQueue()
    queue.add_after("ns/a", 0.3)
    assert queue.get(0.1) is None
    assert queue.num_due() == 0
    assert queue.get(1) == "ns/a"


def test_a_waiting_worker_wakes_for_a_new_key():
    queue = WorkQueue()
    got: list[str | None] = []
    worker = threading.Thread(target=lambda: got.append(queue.get(5)))
    worker.start()
    time.sleep(0.05)
    queue.add("ns/a")
    worker.join(timeout=2)
    assert got == ["ns/a"]


def test_discard_forgets_a_pending_wake_up():
    queue = WorkQueue()
    queue.add_after("ns/gone", 0.05)
    queue.discard("ns/gone")
    assert queue.get(0.2) is None
