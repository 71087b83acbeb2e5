"""Which job changes start a reconcile pass: never our own status writes."""

from __future__ import annotations

import pytest

from diffusion_operator.cache import training_job_changed


def body(generation: int, observed: int | None, deleting: bool = False) -> dict:
    status = {} if observed is None else {"observedGeneration": observed, "phase": "Running"}
    meta: dict = {"generation": generation}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-30T12:00:00Z"
    return {"metadata": meta, "status": status}


@pytest.mark.parametrize(
    ("old", "new", "wakes"),
    [
        (body(3, 3), body(3, 3), False),  # a status patch after the pass that saw generation 3
        (body(3, 2), body(3, 3), False),  # our pass recorded generation 3
        (body(3, 3), body(4, 3), True),  # the user changed the spec
        (body(1, None), body(1, None), True),  # never reconciled yet
        (None, body(1, 1), True),  # new, or listed after an operator restart
        (body(1, 1), None, True),  # deleted
        (body(1, 1), body(1, 1, deleting=True), True),
    ],
)
def test_only_status_writes_on_a_reconciled_spec_are_skipped(
    old: dict | None, new: dict | None, wakes: bool
) -> None:
    assert training_job_changed(old, new) is wakes
