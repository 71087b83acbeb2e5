"""What the operator sees of a job's children, reduced to the facts decisions need."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class WorkerPod:
    name: str
    attempt: int
    index: int
    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    ready: bool = False
    deleting: bool = False
    exit_code: int | None = None
    exit_reason: str | None = None
    exit_message: str | None = None
    finished_at: datetime | None = None
    unschedulable_message: str | None = None
    waiting_reason: str | None = None  # e.g. ImagePullBackOff, CreateContainerConfigError
    disruption_reason: str | None = None
    pod_ip: str | None = None
    node_name: str | None = None
    # Running but not Ready: the node controller marks pods so when their node stops reporting.
    not_ready_since: datetime | None = None
    deletion_requested_at: datetime | None = None  # deletionTimestamp minus its grace period
    uid: str = ""
    summary: dict[str, Any] | None = None  # the trainer's JSON run summary, if it wrote one


@dataclass(frozen=True)
class AttemptJob:
    name: str
    attempt: int
    suspended: bool
    complete: bool = False
    failed: bool = False
    deleting: bool = False
    spec_hash: str | None = None  # None: made before the annotation existed
    # The Job controller decided the Job fails but waits for pods to terminate (k8s >= 1.31).
    failure_target: bool = False
    # When the Failed or FailureTarget condition became true (None: unknown or not set).
    failing_since: datetime | None = None

    @property
    def finished(self) -> bool:
        """Complete or failed, or failing: the Job controller stops what still runs."""
        return self.complete or self.failed or self.failure_target


@dataclass(frozen=True)
class NodeHealth:
    """A worker's node as far as it matters: gone, or not Ready since when."""

    exists: bool = True
    ready: bool = True
    not_ready_since: datetime | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Observed:
    jobs: list[AttemptJob] = field(default_factory=list)
    pods: list[WorkerPod] = field(default_factory=list)
    # Pods of a deleted job with the same name (another uid), not yet gone.
    num_foreign_pods: int = 0
    # Health of the nodes of workers that look unwell (not Ready, or stuck terminating).
    nodes: dict[str, NodeHealth] = field(default_factory=dict)

    def job(self, attempt: int) -> AttemptJob | None:
        return next((j for j in self.jobs if j.attempt == attempt and not j.deleting), None)

    def pods_of(self, attempt: int) -> list[WorkerPod]:
        return [p for p in self.pods if p.attempt == attempt]

    def pods_before(self, attempt: int) -> list[WorkerPod]:
        return [p for p in self.pods if p.attempt < attempt]

    def node(self, pod: WorkerPod) -> NodeHealth | None:
        return self.nodes.get(pod.node_name) if pod.node_name else None

    def latest_attempt(self) -> int:
        return max((j.attempt for j in self.jobs), default=0)
