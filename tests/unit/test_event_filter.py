"""Which job events start a reconcile pass: never our own status writes."""

from __future__ import annotations

import pytest

from diffusion_operator.handlers import is_own_status_write


def body(generation: int, observed: int | None) -> dict:
    status = {} if observed is None else {"observedGeneration": observed, "phase": "Running"}
    return {"metadata": {"generation": generation}, "status": status}


@pytest.mark.parametrize(
    ("event_type", "generation", "observed", "skipped"),
    [
        ("MODIFIED", 3, 3, True),  # a status patch after the pass that saw generation 3
        ("MODIFIED", 4, 3, False),  # the user changed the spec
        ("MODIFIED", 1, None, False),  # never reconciled yet
        ("ADDED", 1, 1, False),
        (None, 2, 2, False),  # the initial listing after an operator restart
    ],
)
def test_only_status_writes_on_a_reconciled_spec_are_skipped(
    event_type: str | None, generation: int, observed: int | None, skipped: bool
) -> None:
    assert is_own_status_write(event_type, body(generation, observed)) is skipped
