"""The DiffusionTrainingJob status (v1alpha1): what the operator reports."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from diffusion_trainer.config import Section

Phase = Literal["Pending", "Running", "Restarting", "Suspended", "Succeeded", "Failed"]
PHASES: tuple[Phase, ...] = ("Pending", "Running", "Restarting", "Suspended", "Succeeded", "Failed")
TERMINAL_PHASES: tuple[Phase, ...] = ("Succeeded", "Failed")


class Condition(Section):
    """metav1.Condition."""

    type: Annotated[str, Field(max_length=316)]
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[str, Field(max_length=1024)] = ""
    message: Annotated[str, Field(max_length=32768)] = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class Workers(Section):
    desired: int = 0
    ready: int = 0
    pending: int = 0
    failed: int = 0
    succeeded: int = 0


class Progress(Section):
    step: int | None = None
    total_steps: int | None = None
    images_per_second: float | None = None
    loss: float | None = None
    eta_seconds: int | None = None
    eta: Annotated[str | None, Field(description="ETA, human readable (e.g. 3h12m).")] = None
    updated_at: str | None = None
    stale: bool | None = None


class CheckpointStatus(Section):
    latest_uri: str | None = None
    step: int | None = None
    time: str | None = None


class FailureRecord(Section):
    attempt: int
    reason: str
    message: str = ""
    time: str | None = None


class DiffusionTrainingJobStatus(Section):
    phase: Phase | None = None
    conditions: Annotated[
        list[Condition],
        Field(
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            }
        ),
    ] = Field(default_factory=list)
    observed_generation: int | None = None
    attempt: Annotated[int, Field(description="Current attempt (one Indexed Job each).")] = 0
    restarts: Annotated[int, Field(description="Gang restarts counted against maxRestarts.")] = 0
    workers: Workers | None = None
    start_time: Annotated[
        str | None, Field(description="When the job last started running: first start or resume.")
    ] = None
    attempt_start_time: str | None = None
    spec_error: Annotated[
        str | None,
        Field(description="Why the current spec cannot run; the running attempt keeps its config."),
    ] = None
    attempt_running_time: Annotated[
        str | None,
        Field(description="When all workers of this attempt first ran; ends its start deadline."),
    ] = None
    completion_time: str | None = None
    restart_after: Annotated[
        str | None, Field(description="When the next attempt may start (backoff).")
    ] = None
    last_failure: FailureRecord | None = None
    progress: Progress | None = None
    checkpoint: CheckpointStatus | None = None
