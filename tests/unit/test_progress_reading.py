"""Rank 0's progress payload is validated field by field: bad fields go, good ones stay."""

from __future__ import annotations

import json

import pytest

from diffusion_operator.progress import keep_last_good, newer_eval
from diffusion_operator.progress_reading import MAX_COUNT, parse_reading


def test_a_good_reading_passes_whole():
    reading, problems = parse_reading(
        {
            "step": 10,
            "totalSteps": 100,
            "imagesPerSecond": 12.5,
            "loss": 0.1,
            "etaSeconds": 90,
            "activity": "training",
            "checkpoint": {"step": 8, "uri": "/ckpt/step-8", "time": "2026-11-30T12:00:00Z"},
            "unknownField": "ignored",
        }
    )
    assert problems == []
    assert reading.step == 10 and reading.checkpoint is not None and reading.checkpoint.step == 8


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("step", "ten"),  # a string, even a numeric one, is not a step
        ("step", "10"),
        ("step", True),
        ("step", -1),
        ("step", MAX_COUNT + 1),  # beyond what JSON readers and int64 hold exactly
        ("totalSteps", 1.5),
        ("loss", float("nan")),
        ("loss", float("inf")),
        ("imagesPerSecond", 1e300),
        ("etaSeconds", [1]),
        ("activity", "dancing"),
        ("checkpoint", {"step": 3, "uri": ""}),
        ("checkpoint", "step-3"),
        ("eval", {"step": 5, "fid": {"1.0": float("nan")}}),
        ("eval", {"step": 5, "clipScore": {"1.0": "high"}}),
        ("eval", {"fid": {"1.0": 3.0}}),  # no step: which weights?
    ],
)
def test_a_bad_field_is_dropped_and_named(field, value):
    reading, problems = parse_reading({"loss": 0.5, field: value})
    assert reading.model_dump(by_alias=True)[field] is None
    assert any(p.startswith(f"{field}:") for p in problems)


def test_the_good_fields_of_a_bad_reading_are_kept():
    raw = json.loads('{"step": "x", "loss": NaN, "imagesPerSecond": 3.5, "totalSteps": 9}')
    reading, problems = parse_reading(raw)
    assert (reading.step, reading.loss, reading.images_per_second, reading.total_steps) == (
        None,
        None,
        3.5,
        9,
    )
    assert len(problems) == 2


@pytest.mark.parametrize("raw", [[1, 2], "text", 3, None])
def test_a_payload_that_is_not_an_object_gives_nothing(raw):
    reading, problems = parse_reading(raw)
    assert reading.step is None and problems


def test_dropped_fields_keep_their_last_good_values():
    current = {"step": 5, "loss": 0.4, "imagesPerSecond": 1.0}
    fresh = {"step": None, "loss": 0.3, "imagesPerSecond": None}
    assert keep_last_good(current, fresh) == {"step": 5, "loss": 0.3, "imagesPerSecond": 1.0}
    assert keep_last_good(None, fresh) == fresh


EVAL_READING = {
    "step": 20,
    "fid": {"1.0": 31.5, "3.0": 18.25},
    "clipScore": {"1.0": 24.0, "3.0": 27.5},
    "numSamples": 1000,
    "seconds": 12.5,
    "grid": "/ckpt/eval/step-00000020/grid.png",
    "report": "/ckpt/eval/step-00000020/report.json",
    "time": "2026-11-30T12:00:00Z",
}


def test_an_evaluation_reaches_status_once():
    reading, problems = parse_reading({"step": 21, "eval": EVAL_READING})
    assert problems == []
    values = reading.model_dump(by_alias=True, exclude_none=True)
    status = newer_eval(None, values)
    assert status is not None
    assert status.step == 20 and status.fid == {"1.0": 31.5, "3.0": 18.25}
    assert status.clip_score == {"1.0": 24.0, "3.0": 27.5}
    assert status.grid == EVAL_READING["grid"]
    assert newer_eval(status, values) is None  # unchanged: no status write
    later = {**EVAL_READING, "step": 30, "time": "2026-11-30T13:00:00Z"}
    assert newer_eval(status, {"eval": later}).step == 30
