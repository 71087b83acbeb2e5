"""Progress readings become status.progress and status.checkpoint; failures only mark stale."""

from __future__ import annotations

from diffusion_operator.progress import (
    fold_reading,
    format_eta,
    mark_stale,
    newer_checkpoint,
    progress_from_reading,
)
from diffusion_operator.status_types import CheckpointStatus

READING = {
    "step": 120,
    "totalSteps": 1000,
    "imagesPerSecond": 712.3456,
    "loss": 0.1234567,
    "etaSeconds": 3725.2,
    "activity": "training",
    "checkpoint": {"uri": "/ckpt/step-00000100", "step": 100, "time": "2026-11-29T12:00:00Z"},
}


def test_progress_from_reading_rounds_and_formats():
    progress = progress_from_reading(READING, "2026-11-29T12:01:00Z")
    assert progress == {
        "step": 120,
        "totalSteps": 1000,
        "imagesPerSecond": 712.35,
        "loss": 0.12346,
        "etaSeconds": 3725,
        "eta": "1h02m",
        "activity": "training",
        "updatedAt": "2026-11-29T12:01:00Z",
        "stepAdvancedAt": "2026-11-29T12:01:00Z",
        "stale": False,
    }


def test_unknown_activity_is_dropped():
    progress = progress_from_reading({**READING, "activity": "dreaming"}, "2026-11-29T12:01:00Z")
    assert progress["activity"] is None


def test_non_finite_values_become_null_so_the_status_patch_stays_valid_json():
    reading = {**READING, "loss": float("inf"), "imagesPerSecond": float("nan"), "etaSeconds": True}
    progress = progress_from_reading(reading, "2026-11-29T12:01:00Z")
    assert (progress["loss"], progress["imagesPerSecond"], progress["etaSeconds"]) == (None,) * 3
    assert progress["eta"] is None
    assert progress["step"] == 120


def test_a_reading_that_changes_nothing_keeps_the_status_as_it_is():
    first = progress_from_reading(READING, "2026-11-29T12:01:00Z")
    same = progress_from_reading(READING, "2026-11-29T12:01:05Z")
    assert fold_reading(first, same) is first  # no status write
    moved = progress_from_reading({**READING, "step": 130}, "2026-11-29T12:01:10Z")
    assert fold_reading(first, moved) == moved
    back = fold_reading(mark_stale(first), same)  # reachable again: not stale
    assert back == {**same, "stepAdvancedAt": first["stepAdvancedAt"]}


def test_the_hang_clock_moves_only_with_the_step_or_the_activity():
    first = progress_from_reading(READING, "2026-11-29T12:01:00Z")
    later = progress_from_reading({**READING, "loss": 0.2}, "2026-11-29T12:09:00Z")
    assert fold_reading(first, later)["stepAdvancedAt"] == "2026-11-29T12:01:00Z"
    saving = progress_from_reading({**READING, "activity": "checkpointing"}, "2026-11-29T12:09:00Z")
    assert fold_reading(first, saving)["stepAdvancedAt"] == "2026-11-29T12:09:00Z"
    moved = progress_from_reading({**READING, "step": 121}, "2026-11-29T12:10:00Z")
    assert fold_reading(first, moved)["stepAdvancedAt"] == "2026-11-29T12:10:00Z"


def test_eta_formats():
    assert format_eta(59) == "0m59s"
    assert format_eta(3 * 86400 + 7200) == "3d2h"
    assert format_eta(None) is None
    assert format_eta(-1) is None


def test_unreachable_endpoint_keeps_values_and_marks_stale():
    progress = progress_from_reading(READING, "t")
    stale = mark_stale(progress)
    assert stale is not None
    assert stale["stale"] is True
    assert stale["step"] == 120
    assert mark_stale(None) is None


def test_only_a_newer_checkpoint_replaces_status():
    assert newer_checkpoint(None, READING) == CheckpointStatus(
        latest_uri="/ckpt/step-00000100", step=100, time="2026-11-29T12:00:00Z"
    )
    assert newer_checkpoint(CheckpointStatus(latest_uri="/x", step=100), READING) is None
    assert newer_checkpoint(CheckpointStatus(latest_uri="/x", step=50), READING) is not None
    assert newer_checkpoint(None, {"step": 1}) is None
    malformed = {"checkpoint": {"uri": "/x", "step": "100"}}
    assert newer_checkpoint(None, malformed) is None
