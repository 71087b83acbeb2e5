"""Span timing on CPU: spans add up and each read starts a new interval."""

from __future__ import annotations

import time

import torch

from diffusion_trainer.span_timer import SpanTimer


def test_spans_add_up_and_reset_on_read() -> None:
    timer = SpanTimer(torch.device("cpu"))
    for _ in range(2):
        with timer.span():
            time.sleep(0.01)
    time.sleep(0.3)  # outside any span: not counted
    first = timer.take_total_s()
    assert 0.02 <= first < 0.3
    assert timer.take_total_s() == 0.0
