"""The planner's state and the moves every decision uses: set a phase (conditions, Events),
come back later, fail the job. Pure: no API calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from diffusion_operator import constants as c
from diffusion_operator.conditions import conditions_for_phase
from diffusion_operator.failures import Failure
from diffusion_operator.observed import Observed
from diffusion_operator.spec import DiffusionTrainingJobSpec, FailureAction
from diffusion_operator.status_types import DiffusionTrainingJobStatus, Incident, Phase
from diffusion_operator.timefmt import format_time


@dataclass(frozen=True)
class JobEvent:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class JobState:
    name: str
    namespace: str
    generation: int | None
    spec: DiffusionTrainingJobSpec
    status: DiffusionTrainingJobStatus
    config_error: str | None = None


@dataclass
class Plan:
    status: DiffusionTrainingJobStatus
    create_attempt: int | None = None
    create_suspended: bool = False
    resume_from: str | None = None
    delete_jobs: list[str] = field(default_factory=list)
    set_suspend: dict[str, bool] = field(default_factory=dict)
    events: list[JobEvent] = field(default_factory=list)
    delete_self: bool = False
    requeue_after_s: float | None = None
    spec: DiffusionTrainingJobSpec | None = None  # the parsed spec the plan was made for
    # (name, uid) of pods whose node will never confirm they stopped.
    force_delete_pods: list[tuple[str, str]] = field(default_factory=list)
    avoid_nodes: list[str] = field(default_factory=list)  # for the attempt created now
    trainer_env: dict[str, str] = field(default_factory=dict)  # for the attempt created now
    failure: Failure | None = None  # what ended the attempt in this pass
    action: FailureAction | None = None  # and what was done about it
    incident_closed: Incident | None = None  # an incident that recovered in this pass
    wrote_status: bool = False  # set once the status this plan carries was written


def backoff_seconds(spec: DiffusionTrainingJobSpec, restarts: int) -> int:
    policy = spec.failure_policy
    return int(min(policy.backoff_seconds * 2 ** max(restarts - 1, 0), policy.max_backoff_seconds))


class PlannerCore:
    def __init__(self, job: JobState, observed: Observed, now: datetime) -> None:
        self.job, self.spec, self.observed, self.now = job, job.spec, observed, now
        self.old_phase = job.status.phase
        self.status = job.status.model_copy(deep=True)
        self.status.observed_generation = job.generation
        self.plan = Plan(status=self.status)

    def set_phase(self, phase: Phase, reason: str, message: str) -> None:
        self.status.phase = phase
        self.status.conditions = conditions_for_phase(
            self.status.conditions,
            phase,
            reason=reason,
            message=message,
            now=format_time(self.now),
            generation=self.job.generation,
        )
        if phase != self.old_phase:
            kind = "Warning" if phase in ("Failed", "Restarting") else "Normal"
            self.plan.events.append(JobEvent(kind, reason, message))
        if phase in ("Succeeded", "Failed") and not self.status.completion_time:
            self.status.completion_time = format_time(self.now)

    def requeue(self, after_s: float) -> None:
        current = self.plan.requeue_after_s
        self.plan.requeue_after_s = after_s if current is None else min(current, after_s)

    def fail(self, reason: str, message: str) -> None:
        job = self.observed.job(self.attempt)
        if job and not job.finished:
            self.stop_attempt(job.name, job.attempt)
        self.set_phase("Failed", reason, message)

    def stop_attempt(self, job_name: str, attempt: int) -> None:
        """Stop an ended attempt's workers that still run. A failed worker fails the Job
        (backoffLimit 0): the Job controller stops the others and the Job stays, so the failed
        pods keep their logs; without one, deleting the Job stops the workers."""
        if not self.has_failed_worker(attempt):
            self.plan.delete_jobs.append(job_name)

    def has_failed_worker(self, attempt: int) -> bool:
        return any(p.phase == "Failed" for p in self.observed.pods_of(attempt))

    def kept_attempts(self) -> set[int]:
        """The earlier attempts whose Jobs stay for their failed workers' logs."""
        failed = {p.attempt for p in self.observed.pods_before(self.attempt) if p.phase == "Failed"}
        return set(sorted(failed, reverse=True)[: c.NUM_FAILED_ATTEMPTS_KEPT])

    @property
    def attempt(self) -> int:
        return self.status.attempt

    @property
    def nodes(self) -> int:
        return self.spec.resources.nodes

    @property
    def num_gpus(self) -> int:
        return self.nodes * self.spec.resources.gpus_per_node
