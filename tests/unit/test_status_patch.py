"""The typed status meets the API server: tolerant parsing and minimal merge patches."""

from __future__ import annotations

from diffusion_operator.status_patch import dump_status, merge_patch, parse_status


def test_a_patch_holds_only_changes_and_nulls_for_what_went():
    old = {
        "phase": "Running",
        "attempt": 1,
        "attemptRunningTime": "2026-11-30T10:00:00Z",
        "progress": {"step": 5, "loss": 0.5, "stale": True},
    }
    new = {"phase": "Running", "attempt": 2, "progress": {"step": 6, "stale": True}}
    assert merge_patch(old, new) == {
        "attempt": 2,
        "attemptRunningTime": None,
        "progress": {"step": 6, "loss": None},
    }
    assert merge_patch(new, new) == {}


def test_an_unchanged_status_writes_nothing():
    raw = {
        "phase": "Running",
        "attempt": 1,
        "restarts": 0,
        "disruptions": 0,
        "rollbacks": 0,
        "conditions": [],
        "progress": {"step": 5, "activity": "training", "stale": False},
    }
    assert merge_patch(raw, dump_status(parse_status(raw))) == {}


def test_an_invalid_stored_field_is_dropped_not_fatal():
    status = parse_status({"phase": "Running", "attempt": "two", "progress": {"step": "x"}})
    assert status.phase == "Running"
    assert (status.attempt, status.progress) == (0, None)
