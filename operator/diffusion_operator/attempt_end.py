"""Has the running attempt ended, and why? Detection only (pure); lifecycle decides.

An attempt ends at the first of: a failed worker; a worker that is being deleted (evicted,
preempted, drained: a lone replacement could never join the gang's rendezvous); a worker whose
node is NotReady, unreachable or gone for longer than the timeout; a worker that vanished; the
worker Job's FailureTarget or Failed condition (the Job controller sets FailureTarget and holds
back Failed while a pod is still terminating, possibly forever on a lost node); and a training
step that stopped advancing (the hang backstop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from diffusion_operator.failures import (
    Failure,
    classify_pod,
    is_conclusive,
    most_telling,
    node_failure,
)
from diffusion_operator.observed import AttemptJob, Observed, WorkerPod
from diffusion_operator.spec import DiffusionTrainingJobSpec
from diffusion_operator.status_types import DiffusionTrainingJobStatus
from diffusion_operator.timefmt import parse_time

# A plain error or a terminated worker may be the echo of another worker's failure that the
# API has not shown yet (its summary names the real cause): wait this long after the first
# failure for the gang's other workers to end before deciding.
SETTLE_S = 5.0
# The operator's hang check is a backstop behind the trainer's own watchdog (which dumps every
# rank's stacks and exits as Hang): it fires this much later than hangTimeoutSeconds.
HANG_BACKSTOP_FACTOR = 1.25
# Before its first reported step the trainer's own watchdog decides (the first report can be a
# log interval away): the backstop waits longer, so that it never races the watchdog's dump.
HANG_BACKSTOP_FIRST_STEP_FACTOR = 3.0


@dataclass
class Detection:
    failure: Failure | None = None
    recheck_after_s: list[float] = field(default_factory=list)  # when a timeout will be reached


class AttemptWatch:
    def __init__(
        self,
        spec: DiffusionTrainingJobSpec,
        status: DiffusionTrainingJobStatus,
        observed: Observed,
        now: datetime,
    ) -> None:
        self.spec, self.status, self.observed, self.now = spec, status, observed, now
        self.detection = Detection()

    def detect(self, job: AttemptJob, pods: list[WorkerPod]) -> Detection:
        failures = [classify_pod(p) for p in pods if p.phase == "Failed"]
        failures += [terminating(p) for p in pods if p.deleting and p.phase != "Failed"]
        failures += self.node_failures([p for p in pods if p.phase in ("Pending", "Running")])
        failures += self.lost_workers(pods)
        self.detection.failure = self.settled(most_telling(failures), pods)
        if self.detection.failure is None and (job.failed or job.failure_target):
            self.detection.failure = self.job_failure(job)
        return self.detection

    def job_failure(self, job: AttemptJob) -> Failure | None:
        """The Job failed with no failed worker in sight: the pod that failed it may not have
        reached this operator's watch yet (each kind has its own stream), so wait a moment
        for the pod's own, more telling, failure before settling for the Job's."""
        if job.failing_since is not None:
            waited_s = (self.now - job.failing_since).total_seconds()
            if waited_s < SETTLE_S:
                self.detection.recheck_after_s.append(SETTLE_S - waited_s)
                return None
        condition = "Failed" if job.failed else "FailureTarget"
        message = f"the worker Job {job.name} has condition {condition} and no failed worker"
        return Failure("Error", "JobFailed", message)

    def settled(self, failure: Failure | None, pods: list[WorkerPod]) -> Failure | None:
        """The failure, or None for now while it is inconclusive, recent, and other workers
        have yet to end."""
        if failure is None or is_conclusive(failure):
            return failure
        others_running = any(p.phase in ("Pending", "Running") and not p.deleting for p in pods)
        if failure.failed_at is None or not others_running:
            return failure
        waited_s = (self.now - failure.failed_at).total_seconds()
        if waited_s < SETTLE_S:
            self.detection.recheck_after_s.append(SETTLE_S - waited_s)
            return None
        return failure

    def node_failures(self, pods: list[WorkerPod]) -> list[Failure]:
        failures = []
        timeout_s = self.spec.failure_policy.node_not_ready_timeout_seconds
        for pod in pods:
            node = self.observed.node(pod)
            if node is not None and not node.exists:
                failures.append(node_failure(pod, "NodeLost", "the node was deleted", self.now))
                continue
            if node is not None and node.ready:
                continue  # the pod is unwell, not its node
            since = (node.not_ready_since if node else None) or pod.not_ready_since
            if since is None:
                continue
            waited_s = (self.now - since).total_seconds()
            if waited_s < timeout_s:
                self.detection.recheck_after_s.append(timeout_s - waited_s)
                continue
            why = (node.reason if node else None) or "NotReady"
            detail = f"node not Ready ({why}) for {int(waited_s)}s"
            failures.append(node_failure(pod, "NodeNotReady", detail, since))
        return failures

    def lost_workers(self, pods: list[WorkerPod]) -> list[Failure]:
        """Workers gone without a trace once the gang ran (force-deleted with their node)."""
        if not self.status.attempt_running_time:
            return []
        present = {p.index for p in pods}
        missing = [i for i in range(self.spec.resources.nodes) if i not in present]
        # When it vanished is unknown: no failed_at, so it never waits to settle.
        return [
            Failure("Disruption", "WorkerLost", f"worker {index} vanished") for index in missing
        ]

    def hang(self) -> Failure | None:
        """No step for the hang timeout while training (startup, saves, eval excluded)."""
        timeout_s = self.spec.failure_policy.hang_timeout_seconds
        progress = self.status.progress
        if not timeout_s or progress is None or progress.activity != "training":
            return None
        advanced = parse_time(progress.step_advanced_at)
        running = parse_time(self.status.attempt_running_time)
        if advanced is None or running is None:
            return None
        since = max(advanced, running)
        first_step = progress.step is None
        limit_s = timeout_s * (
            HANG_BACKSTOP_FIRST_STEP_FACTOR if first_step else HANG_BACKSTOP_FACTOR
        )
        idle_s = (self.now - since).total_seconds()
        if idle_s < limit_s:
            self.detection.recheck_after_s.append(limit_s - idle_s)
            return None
        where = "no step reported" if first_step else f"step {progress.step} has not advanced"
        message = (
            f"{where} for {int(idle_s)}s (hangTimeoutSeconds={timeout_s}) while all workers run"
        )
        return Failure("Hang", "StepStalled", message, failed_at=since, step=progress.step)


def terminating(pod: WorkerPod) -> Failure:
    reason = pod.disruption_reason or "WorkerTerminating"
    message = f"worker {pod.index} (pod {pod.name}) is being deleted ({reason})"
    return Failure("Disruption", reason, message, failed_at=pod.deletion_requested_at)


def stuck_pods(
    spec: DiffusionTrainingJobSpec, pods: list[WorkerPod], observed: Observed, now: datetime
) -> tuple[list[WorkerPod], list[float]]:
    """Terminating pods on a NotReady, unreachable or deleted node past the bound: their
    kubelet will never confirm they stopped. Returns them and when others will be due."""
    bound = timedelta(seconds=spec.failure_policy.pod_termination_timeout_seconds)
    stuck, due_s = [], []
    for pod in pods:
        if pod.deletion_requested_at is None or not on_unhealthy_node(pod, observed):
            continue
        remaining_s = (pod.deletion_requested_at + bound - now).total_seconds()
        if remaining_s <= 0:
            stuck.append(pod)
        else:
            due_s.append(remaining_s)
    return stuck, due_s


def on_unhealthy_node(pod: WorkerPod, observed: Observed) -> bool:
    node = observed.node(pod)
    if node is not None:
        return not (node.exists and node.ready)
    return pod.not_ready_since is not None or pod.node_name is None
