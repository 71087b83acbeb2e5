"""What an attempt's end costs: the failure policy's action, its budget (restarts counted
or not, rollbacks), the backoff, node avoidance, and force-deleting workers stuck on dead
nodes. Pure: the plan says what to do."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from diffusion_operator import goodput
from diffusion_operator.attempt_end import stuck_pods
from diffusion_operator.failures import Failure, choose_action
from diffusion_operator.observed import WorkerPod
from diffusion_operator.planner_core import JobEvent, PlannerCore, backoff_seconds
from diffusion_operator.spec import DiffusionTrainingJobSpec, FailureAction
from diffusion_operator.status_types import AvoidedNode, FailureRecord, Rollback
from diffusion_operator.timefmt import format_time, parse_time

Budget = Literal["restarts", "disruptions", "rollbacks"]


def budget_of(spec: DiffusionTrainingJobSpec, action: FailureAction) -> tuple[Budget, int]:
    """(status counter, limit) an action spends."""
    policy = spec.failure_policy
    if action == "RestartNotCounted":
        return "disruptions", policy.max_disruptions
    if action == "Rollback":
        return "rollbacks", policy.non_finite.max_rollbacks
    return "restarts", policy.max_restarts


ACTION_WORDS: dict[FailureAction, str] = {
    "Restart": "restarting the gang (counted)",
    "RestartNotCounted": "restarting the gang (not counted against maxRestarts)",
    "Rollback": "rolling back to an older checkpoint",
    "Fail": "failing",
}
LIMIT_FIELDS: dict[Budget, str] = {
    "restarts": "failurePolicy.maxRestarts",
    "disruptions": "failurePolicy.maxDisruptions",
    "rollbacks": "failurePolicy.nonFinite.maxRollbacks",
}


class FailureResponse(PlannerCore):
    def nodes_to_avoid(self) -> list[str]:
        """Nodes that failed a worker recently; expired entries leave the status."""
        current = [
            entry
            for entry in self.status.avoided_nodes or []
            if (parse_time(entry.until) or self.now) > self.now
        ]
        self.status.avoided_nodes = current or None
        return sorted({entry.name for entry in current})

    def avoid_node(self, name: str, reason: str) -> None:
        avoid_s = self.spec.failure_policy.node_avoidance_seconds
        if not avoid_s:
            return
        until = format_time(self.now + timedelta(seconds=avoid_s))
        others = [e for e in self.status.avoided_nodes or [] if e.name != name]
        self.status.avoided_nodes = [*others, AvoidedNode(name=name, reason=reason, until=until)]

    def force_delete_stuck(self, leftovers: list[WorkerPod]) -> None:
        """Waiting for old workers is bounded: a pod whose node is gone or NotReady would hold
        the gang back forever (a new attempt must not start beside a worker that may still
        run)."""
        stuck, due_s = stuck_pods(self.spec, leftovers, self.observed, self.now)
        for pod in stuck:
            self.plan.force_delete_pods.append((pod.name, pod.uid))
            bound = self.spec.failure_policy.pod_termination_timeout_seconds
            message = (
                f"force-deleted worker pod {pod.name} of attempt {pod.attempt}: still "
                f"terminating {bound}s past its grace period on node {pod.node_name}, which "
                "is NotReady, unreachable or gone"
            )
            self.plan.events.append(JobEvent("Warning", "ForceDeletedWorker", message))
        for remaining_s in due_s:
            self.requeue(remaining_s)

    def handle_failure(self, job_name: str, failure: Failure) -> None:
        """Record why the attempt ended, then restart (counted or not), roll back or fail."""
        action = choose_action(self.spec.failure_policy, failure)
        self.plan.failure, self.plan.action = failure, action
        message = f"attempt {self.attempt}: {failure.message}"
        self.status.last_failure = FailureRecord(
            attempt=self.attempt,
            reason=failure.reason,
            failure_class=failure.failure_class,
            action=action,
            exit_code=failure.exit_code,
            message=message[:4000],
            time=format_time(self.now),
        )
        lost_gpu_s = goodput.close_run(self.status, self.now, self.num_gpus, failure)
        goodput.open_incident(self.status, failure, self.now, lost_gpu_s)
        self.status.attempt_running_time = None  # accounted for: this attempt is over
        if failure.node_name and failure.failure_class == "Disruption":
            self.avoid_node(failure.node_name, failure.reason)
        if action == "Fail":
            self.fail(failure.reason, f"{message}; failurePolicy action: Fail")
            return
        counter, limit = budget_of(self.spec, action)
        used = getattr(self.status, counter)
        if used >= limit:
            field_name = LIMIT_FIELDS[counter]
            self.fail(failure.reason, f"{message}; no {counter} left ({field_name}: {limit})")
            return
        delay_s = backoff_seconds(self.spec, used + 1)
        self.stop_attempt(job_name, self.attempt)
        setattr(self.status, counter, used + 1)
        self.status.attempt = self.attempt + 1
        self.status.restart_after = format_time(self.now + timedelta(seconds=delay_s))
        if action == "Rollback":
            self.plan_rollback(failure)
        self.set_phase(
            "Restarting",
            failure.reason,
            f"{message}; {ACTION_WORDS[action]} as attempt {self.attempt} in {delay_s}s",
        )
        self.requeue(1.0)

    def plan_rollback(self, failure: Failure) -> None:
        """The next attempt resumes from an older checkpoint, past the offending batches; the
        newer checkpoints are abandoned, so status no longer names them."""
        self.status.rollback = Rollback(
            attempt=self.attempt,
            checkpoints=self.spec.failure_policy.non_finite.rollback_checkpoints,
            skip_data_to_step=failure.step,
        )
        self.status.checkpoint = None
