"""The status between the API server (camelCase JSON) and the planner (typed models).

The planner works on `DiffusionTrainingJobStatus`, the model the CRD's status schema is
generated from, so every field and class it writes is checked by the type checker. A pass
writes only what it changed, as a JSON merge patch: never what others wrote meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from diffusion_operator.status_types import DiffusionTrainingJobStatus

log = logging.getLogger("diffusion_operator")


def parse_status(raw: Mapping[str, Any] | None) -> DiffusionTrainingJobStatus:
    """The stored status, typed; a field that does not validate (written by an older version,
    or by hand) is dropped with a warning rather than stopping the job's reconciliation."""
    data = dict(raw or {})
    while True:
        try:
            return DiffusionTrainingJobStatus.model_validate(data)
        except ValidationError as error:
            bad = {str(e["loc"][0]) for e in error.errors() if e["loc"]} & data.keys()
            if not bad:
                return DiffusionTrainingJobStatus()
            log.warning("ignoring invalid status fields %s", sorted(bad))
            for key in bad:
                data.pop(key)


def dump_status(status: DiffusionTrainingJobStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: changed keys, nested objects
    recursively, null for what `new` no longer has."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            nested = merge_patch(before, value)
            if nested:
                patch[key] = nested
        elif before != value:
            patch[key] = value
    for key in old.keys() - new.keys():
        if old[key] is not None:
            patch[key] = None
    return patch
