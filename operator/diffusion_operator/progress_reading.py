"""Rank 0's /progress payload, validated field by field: a bad field is dropped with a
warning, the good ones are kept, and nothing a trainer sends can fail a pass or make the
status patch invalid (wrong types, NaN, numbers beyond what the CRD's int64 holds)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError

MAX_COUNT = 2**53  # beyond this a step count is a bug, and JSON readers lose precision
MAX_MAGNITUDE = 1e18
Count = Annotated[StrictInt, Field(ge=0, le=MAX_COUNT)]
Number = Annotated[
    StrictFloat | StrictInt, Field(ge=-MAX_MAGNITUDE, le=MAX_MAGNITUDE, allow_inf_nan=False)
]
Activity = Literal["starting", "training", "checkpointing", "evaluating", "stopping"]


class CheckpointReading(BaseModel):
    model_config = ConfigDict(extra="ignore")

    step: Count
    uri: Annotated[str, Field(min_length=1, max_length=2048)]
    time: Annotated[str, Field(max_length=64)] | None = None


ScaleKey = Annotated[str, Field(max_length=16)]
Uri = Annotated[str, Field(min_length=1, max_length=2048)]


class EvalReading(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    step: Count
    fid: Annotated[dict[ScaleKey, Number], Field(max_length=8)] = {}
    clip_score: Annotated[dict[ScaleKey, Number], Field(max_length=8, alias="clipScore")] = {}
    num_samples: Annotated[Count | None, Field(alias="numSamples")] = None
    seconds: Number | None = None
    grid: Uri | None = None
    report: Uri | None = None
    time: Annotated[str, Field(max_length=64)] | None = None


class ProgressReading(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    step: Count | None = None
    total_steps: Annotated[Count | None, Field(alias="totalSteps")] = None
    images_per_second: Annotated[Number | None, Field(alias="imagesPerSecond")] = None
    loss: Number | None = None
    eta_seconds: Annotated[Number | None, Field(alias="etaSeconds")] = None
    activity: Activity | None = None
    checkpoint: CheckpointReading | None = None
    eval: EvalReading | None = None


def parse_reading(raw: Any) -> tuple[ProgressReading, list[str]]:
    """The valid part of a reading, and what was dropped (field: why)."""
    if not isinstance(raw, dict):
        return ProgressReading(), [f"not a JSON object ({type(raw).__name__})"]
    good: dict[str, Any] = {}
    problems: list[str] = []
    for name, field in ProgressReading.model_fields.items():
        alias = field.alias or name
        if alias not in raw or raw[alias] is None:
            continue
        try:
            ProgressReading.model_validate({alias: raw[alias]})
        except ValidationError as error:
            problems.append(f"{alias}: {error.errors()[0]['msg']}")
            continue
        good[alias] = raw[alias]
    return ProgressReading.model_validate(good), problems
