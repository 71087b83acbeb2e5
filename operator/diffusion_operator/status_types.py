"""The DiffusionTrainingJob status (v1alpha1): what the operator reports."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from diffusion_operator.spec import FailureAction, FailureClass
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
    activity: Annotated[
        Literal["starting", "training", "checkpointing", "evaluating", "stopping"] | None,
        Field(description="What rank 0 is doing; only training counts towards a hang."),
    ] = None
    updated_at: str | None = None
    step_advanced_at: Annotated[
        str | None, Field(description="When the step or activity last changed (hang clock).")
    ] = None
    stale: bool | None = None


class CheckpointStatus(Section):
    latest_uri: str | None = None
    step: int | None = None
    time: str | None = None


class EvalStatus(Section):
    """The latest evaluation the trainer reported."""

    step: Annotated[int | None, Field(description="Optimizer step of the evaluated weights.")] = (
        None
    )
    fid: Annotated[
        dict[str, float] | None, Field(description="FID per guidance scale (lower is better).")
    ] = None
    clip_score: Annotated[
        dict[str, float] | None,
        Field(description="CLIP score per guidance scale (higher is better)."),
    ] = None
    num_samples: Annotated[int | None, Field(description="Images generated per scale.")] = None
    seconds: Annotated[float | None, Field(description="How long the evaluation took.")] = None
    grid: Annotated[
        str | None, Field(description="PNG of samples: a row per scale, a column per prompt.")
    ] = None
    report: Annotated[str | None, Field(description="report.json with the settings used.")] = None
    time: str | None = None


class FailureRecord(Section):
    attempt: int
    reason: Annotated[str, Field(description="CamelCase cause, e.g. PreemptionByScheduler.")]
    failure_class: Annotated[
        FailureClass | None,
        Field(alias="class", description="Disruption, ConfigError, NonFinite, OOMKilled, ..."),
    ] = None
    action: Annotated[
        FailureAction | None, Field(description="What the failure policy did about it.")
    ] = None
    exit_code: int | None = None
    message: str = ""
    time: str | None = None


class AvoidedNode(Section):
    name: str
    reason: str = ""
    until: Annotated[str, Field(description="New attempts prefer other nodes until then.")]


class Rollback(Section):
    attempt: Annotated[int, Field(description="The attempt that resumes from older weights.")]
    checkpoints: Annotated[int, Field(description="Committed checkpoints back from the newest.")]
    skip_data_to_step: Annotated[
        int | None, Field(description="Its data starts where this step's batch ended.")
    ] = None


class Goodput(Section):
    allocated_gpu_seconds: Annotated[
        float, Field(description="GPU-seconds of finished attempts' running workers.")
    ] = 0.0
    productive_gpu_seconds: Annotated[
        float, Field(description="Of those, the ones whose work a committed checkpoint kept.")
    ] = 0.0
    lost_gpu_seconds: Annotated[
        float,
        Field(description="Work redone after failures plus GPUs waiting for the next attempt."),
    ] = 0.0
    ratio: Annotated[
        float | None, Field(description="productive / (allocated + waiting for restarts).")
    ] = None


class Incident(Section):
    attempt: int
    failure_class: Annotated[FailureClass, Field(alias="class")]
    reason: str
    failed_at: str | None = None
    detected_at: str | None = None
    recovered_at: str | None = None
    detect_seconds: float | None = None
    recover_seconds: float | None = None
    lost_gpu_seconds: float | None = None


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
    disruptions: Annotated[
        int, Field(description="Restarts caused by the cluster, not counted against maxRestarts.")
    ] = 0
    rollbacks: Annotated[int, Field(description="Restarts from an older checkpoint.")] = 0
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
    avoided_nodes: Annotated[
        list[AvoidedNode] | None, Field(description="Nodes that recently failed a worker.")
    ] = None
    rollback: Rollback | None = None
    progress: Progress | None = None
    checkpoint: CheckpointStatus | None = None
    eval: EvalStatus | None = None
    goodput: Goodput | None = None
    incidents: Annotated[
        list[Incident] | None, Field(max_length=10, description="The latest failures.")
    ] = None

    def condition_message(self, type_: str) -> str | None:
        """The message of the condition of this type, if it is True."""
        found = next((c for c in self.conditions if c.type == type_), None)
        return found.message if found is not None and found.status == "True" else None
