"""Passes of one job never overlap, and events that arrive while a pass is queued are absorbed."""

from __future__ import annotations

import threading

from diffusion_operator import pass_gate
from diffusion_operator.pass_gate import exclusive_pass
from testenv.waiting import wait_until


def test_a_queued_pass_absorbs_later_events_and_runs_after_the_current_one():
    order: list[str] = []
    running, release = threading.Event(), threading.Event()

    def first_pass() -> None:
        with exclusive_pass("ns/job") as runs:
            assert runs
            running.set()
            release.wait(10)
            order.append("first")

    def later_pass() -> None:
        with exclusive_pass("ns/job") as runs:
            order.append("ran" if runs else "absorbed")

    first = threading.Thread(target=first_pass)
    first.start()
    assert running.wait(10)
    queued = threading.Thread(target=later_pass)
    queued.start()
    wait_until(lambda: "ns/job" in pass_gate._queued, 10, "the second pass to queue")
    burst = [threading.Thread(target=later_pass) for _ in range(5)]
    for thread in burst:
        thread.start()
        thread.join(10)
    assert order == ["absorbed"] * 5  # returned at once, while the queued pass waits
    release.set()
    first.join(10)
    queued.join(10)
    assert order == ["absorbed"] * 5 + ["first", "ran"]
    with exclusive_pass("ns/job") as runs:
        assert runs  # nothing left queued
