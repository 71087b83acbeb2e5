"""Decide what a job needs next, from its spec, its status and what exists: a pure function.

Level-based: every call re-derives the plan from the observed state, so a missed event or an
operator restart never stalls a job, and running it twice does no harm (names are fixed, creation
tolerates AlreadyExists). How an attempt ended is `attempt_end`'s and `failures`' business; what
that costs (restart counted or not, rollback, fail) is decided here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from diffusion_operator import goodput, names
from diffusion_operator.attempt_end import AttemptWatch, stuck_pods
from diffusion_operator.conditions import conditions_for_phase
from diffusion_operator.failures import Failure, choose_action
from diffusion_operator.observed import AttemptJob, Observed, WorkerPod
from diffusion_operator.progress import newer_checkpoint
from diffusion_operator.spec import DiffusionTrainingJobSpec, FailureAction, spec_fingerprint
from diffusion_operator.timefmt import format_time, parse_time


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
    status: dict[str, Any]
    config_error: str | None = None


@dataclass
class Plan:
    status: dict[str, Any]
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
    incident_closed: dict[str, Any] | None = None  # an incident that recovered in this pass


def backoff_seconds(spec: DiffusionTrainingJobSpec, restarts: int) -> int:
    policy = spec.failure_policy
    return int(min(policy.backoff_seconds * 2 ** max(restarts - 1, 0), policy.max_backoff_seconds))


def budget_of(spec: DiffusionTrainingJobSpec, action: FailureAction) -> tuple[str, int]:
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
LIMIT_FIELDS = {
    "restarts": "failurePolicy.maxRestarts",
    "disruptions": "failurePolicy.maxDisruptions",
    "rollbacks": "failurePolicy.nonFinite.maxRollbacks",
}


class _Planner:
    def __init__(self, job: JobState, observed: Observed, now: datetime) -> None:
        self.job, self.spec, self.observed, self.now = job, job.spec, observed, now
        self.old_phase = job.status.get("phase")
        self.status: dict[str, Any] = dict(job.status)
        self.status["observedGeneration"] = job.generation
        self.plan = Plan(status=self.status)

    def set_phase(self, phase: str, reason: str, message: str) -> None:
        self.status["phase"] = phase
        self.status["conditions"] = conditions_for_phase(
            list(self.status.get("conditions", [])),
            phase,
            reason=reason,
            message=message,
            now=format_time(self.now),
            generation=self.job.generation,
        )
        if phase != self.old_phase:
            kind = "Warning" if phase in ("Failed", "Restarting") else "Normal"
            self.plan.events.append(JobEvent(kind, reason, message))
        if phase in ("Succeeded", "Failed") and not self.status.get("completionTime"):
            self.status["completionTime"] = format_time(self.now)

    def requeue(self, after_s: float) -> None:
        current = self.plan.requeue_after_s
        self.plan.requeue_after_s = after_s if current is None else min(current, after_s)

    def fail(self, reason: str, message: str) -> None:
        job = self.observed.job(self.attempt)
        if job and not job.finished and not self.has_failed_worker(self.attempt):
            self.plan.delete_jobs.append(job.name)  # stops the workers that still run
        # A failed worker fails the Job (backoffLimit 0): the Job controller stops the others
        # and the failed pods stay, with their logs, until the job is deleted.
        self.set_phase("Failed", reason, message)

    def has_failed_worker(self, attempt: int) -> bool:
        return any(p.phase == "Failed" for p in self.observed.pods_of(attempt))

    @property
    def attempt(self) -> int:
        return int(self.status.get("attempt", 0))

    def run(self) -> Plan:
        if self.old_phase in ("Succeeded", "Failed"):
            self.finish_terminal()
        elif self.job.config_error and not self.attempt_is_active():
            self.fail("InvalidSpec", self.job.config_error)
        elif not self.check_active_deadline():
            self.note_spec_error()
            self.adopt_newer_attempt()
            if self.attempt == 0:
                self.start_first_attempt()
            elif self.observed.job(self.attempt) is None:
                self.start_next_attempt()
            else:
                self.track_attempt()
        return self.plan

    def attempt_is_active(self) -> bool:
        job = self.observed.job(self.attempt) if self.attempt else None
        return job is not None and not job.finished

    def note_spec_error(self) -> None:
        """A spec edit that cannot be rendered while an attempt runs: the attempt keeps its
        config; the job fails only if it needs a new attempt before the spec is fixed."""
        error = self.job.config_error
        if error and error != self.status.get("specError"):
            self.plan.events.append(
                JobEvent("Warning", "SpecRejected", f"{error}; the running attempt continues")
            )
        self.status["specError"] = error

    def finish_terminal(self) -> None:
        if self.old_phase == "Failed":
            # Level-based: a delete that did not happen when the job failed happens now.
            self.plan.delete_jobs.extend(
                job.name
                for job in self.observed.jobs
                if not (job.finished or job.deleting or self.has_failed_worker(job.attempt))
            )
        ttl = self.spec.run_policy.ttl_seconds_after_finished
        finished = parse_time(self.status.get("completionTime"))
        if ttl is None or finished is None:
            return
        remaining_s = (finished + timedelta(seconds=ttl) - self.now).total_seconds()
        if remaining_s <= 0:
            self.plan.delete_self = True
        else:
            self.requeue(remaining_s)

    def deadline_passed(self, started_field: str, deadline_s: int | None) -> bool:
        """True once deadline_s have passed since status[started_field]; else come back then."""
        started = parse_time(self.status.get(started_field))
        if deadline_s is None or started is None:
            return False
        remaining_s = deadline_s - (self.now - started).total_seconds()
        if remaining_s > 0:
            self.requeue(remaining_s)
            return False
        return True

    def check_active_deadline(self) -> bool:
        """As for a batch/v1 Job: the clock stops while suspended and restarts at resume."""
        deadline_s = self.spec.run_policy.active_deadline_seconds
        if self.old_phase == "Suspended" or not self.deadline_passed("startTime", deadline_s):
            return False
        self.fail("DeadlineExceeded", f"job ran longer than activeDeadlineSeconds={deadline_s}")
        return True

    def adopt_newer_attempt(self) -> None:
        """A Job newer than status says exists (status patch lost in a crash): adopt it."""
        latest = self.observed.latest_attempt()
        if latest > self.attempt:
            if self.attempt == 0:
                self.status.setdefault("startTime", format_time(self.now))
                self.status.setdefault("attemptStartTime", format_time(self.now))
            self.status["attempt"] = latest

    def start_first_attempt(self) -> None:
        self.status.update(
            attempt=1,
            restarts=self.status.get("restarts", 0),
            startTime=format_time(self.now),
        )
        self.create_attempt(1)

    def create_attempt(self, attempt: int) -> None:
        if self.job.config_error:
            self.fail("InvalidSpec", self.job.config_error)
            return
        if self.observed.num_foreign_pods:
            # A deleted job of the same name: its pods would share our pods' DNS names.
            message = (
                f"waiting for {self.observed.num_foreign_pods} worker pods of a deleted job "
                "with the same name to terminate"
            )
            self.set_phase(self.old_phase or "Pending", "WaitingForOldWorkers", message)
            self.requeue(1.0)
            return
        suspended = self.spec.run_policy.suspend or bool(self.spec.run_policy.queue_name)
        checkpoint = self.status.get("checkpoint") or {}
        self.plan.create_attempt = attempt
        self.plan.create_suspended = suspended
        self.plan.resume_from = checkpoint.get("latestUri")
        self.plan.avoid_nodes = self.nodes_to_avoid()
        rollback = self.status.get("rollback") or {}
        if rollback.get("attempt") == attempt:
            self.plan.resume_from = None  # the trainer picks the older checkpoint itself
            self.plan.trainer_env = {"DTJ_ROLLBACK_CHECKPOINTS": str(rollback["checkpoints"])}
            if rollback.get("skipDataToStep") is not None:
                self.plan.trainer_env["DTJ_DATA_SKIP_TO_STEP"] = str(rollback["skipDataToStep"])
        self.status["attemptStartTime"] = format_time(self.now)
        self.status["attemptRunningTime"] = None
        self.status["restartAfter"] = None
        self.status["workers"] = {"desired": self.spec.resources.nodes, "ready": 0}
        if suspended:
            self.set_suspended()
        elif self.old_phase in (None, "Pending"):  # the first attempt, or a new spec
            self.set_phase(
                "Pending", "Created", f"created attempt {attempt} with {self.nodes} workers"
            )
        else:
            self.set_phase(
                "Restarting",
                "AttemptCreated",
                f"created attempt {attempt}, resuming from {self.plan.resume_from or 'scratch'}",
            )

    @property
    def nodes(self) -> int:
        return self.spec.resources.nodes

    @property
    def num_gpus(self) -> int:
        return self.nodes * self.spec.resources.gpus_per_node

    def nodes_to_avoid(self) -> list[str]:
        """Nodes that failed a worker recently; expired entries leave the status."""
        current = [
            entry
            for entry in self.status.get("avoidedNodes") or []
            if (parse_time(entry.get("until")) or self.now) > self.now
        ]
        self.status["avoidedNodes"] = current or None
        return sorted({entry["name"] for entry in current})

    def avoid_node(self, name: str, reason: str) -> None:
        avoid_s = self.spec.failure_policy.node_avoidance_seconds
        if not avoid_s:
            return
        until = format_time(self.now + timedelta(seconds=avoid_s))
        others = [e for e in self.status.get("avoidedNodes") or [] if e.get("name") != name]
        self.status["avoidedNodes"] = [*others, {"name": name, "reason": reason, "until": until}]

    def start_next_attempt(self) -> None:
        """Attempt N's Job is missing: clean up older attempts, wait for their pods, back off."""
        for job in self.observed.jobs:
            if job.attempt < self.attempt and not job.deleting:
                self.plan.delete_jobs.append(job.name)
        leftovers = self.observed.pods_before(self.attempt)
        if leftovers:
            self.force_delete_stuck(leftovers)
            message = f"waiting for {len(leftovers)} worker pods of earlier attempts to terminate"
            self.set_phase("Restarting", "WaitingForOldWorkers", message)
            self.requeue(1.0)
            return
        restart_after = parse_time(self.status.get("restartAfter"))
        if restart_after and restart_after > self.now:
            self.requeue((restart_after - self.now).total_seconds())
            return
        self.create_attempt(self.attempt)

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

    def set_suspended(self) -> None:
        if self.spec.run_policy.suspend:
            self.set_phase("Suspended", "Suspended", "suspended by spec.runPolicy.suspend")
        else:
            queue = self.spec.run_policy.queue_name
            self.set_phase(
                "Suspended", "WaitingForQueue", f"waiting for admission by queue {queue}"
            )

    def track_attempt(self) -> None:
        job = self.observed.job(self.attempt)
        assert job is not None
        if self.spec.run_policy.suspend and not job.suspended:
            self.plan.set_suspend[job.name] = True
            self.set_suspended()
            return
        if job.suspended:
            self.track_suspended(job)
            return
        if self.old_phase == "Suspended":
            self.mark_resumed()  # unsuspended by someone else, e.g. Kueue admission
        pods = self.observed.pods_of(self.attempt)
        self.take_final_checkpoint(pods)
        if job.complete:
            goodput.close_run(self.status, self.now, self.num_gpus, None)
            self.set_phase(
                "Succeeded", "AllWorkersSucceeded", f"all {self.nodes} workers succeeded"
            )
            return
        watch = AttemptWatch(self.spec, self.status, self.observed, self.now)
        detection = watch.detect(job, pods)
        failure = detection.failure
        if failure is None and self.gang_running(pods):
            failure = watch.hang()
        for recheck_s in detection.recheck_after_s:
            self.requeue(recheck_s)
        if failure is not None:
            self.handle_failure(job.name, failure)
        else:
            self.track_workers(pods)

    def gang_running(self, pods: list[WorkerPod]) -> bool:
        running = [p for p in pods if p.phase in ("Running", "Succeeded") and not p.deleting]
        return len(running) >= self.nodes

    def take_final_checkpoint(self, pods: list[WorkerPod]) -> None:
        """The checkpoint a worker's summary names, if newer than status says: the final one
        is written after the last progress reading."""
        for pod in pods:
            summary = pod.summary or {}
            step = summary.get("lastCheckpointStep")
            if not summary.get("lastCheckpoint") or not isinstance(step, int):
                continue
            time = format_time(pod.finished_at) if pod.finished_at else format_time(self.now)
            reading = {"checkpoint": {"uri": summary["lastCheckpoint"], "step": step, "time": time}}
            newer = newer_checkpoint(self.status.get("checkpoint"), reading)
            if newer:
                self.status["checkpoint"] = newer

    def mark_resumed(self) -> None:
        """Both deadlines restart: time spent suspended or queued is not running time."""
        self.status["startTime"] = format_time(self.now)
        self.status["attemptStartTime"] = format_time(self.now)
        self.status["attemptRunningTime"] = None  # suspension deleted the pods

    def track_suspended(self, job: AttemptJob) -> None:
        if self.spec.run_policy.suspend or self.spec.run_policy.queue_name:
            self.set_suspended()
            return
        self.mark_resumed()
        if job.spec_hash is not None and job.spec_hash != spec_fingerprint(self.spec):
            # Unsuspending would run the old shape (nodes, image, ...) with the new config.
            self.plan.delete_jobs.append(job.name)
            self.status.update(attempt=self.attempt + 1, restartAfter=None)
            self.set_phase(
                "Pending",
                "SpecChanged",
                f"the spec changed while suspended: resuming as attempt {self.attempt}",
            )
            return
        self.plan.set_suspend[job.name] = False
        self.set_phase("Pending", "Resumed", "resumed; waiting for workers")

    def handle_failure(self, job_name: str, failure: Failure) -> None:
        """Record why the attempt ended, then restart (counted or not), roll back or fail."""
        action = choose_action(self.spec.failure_policy, failure)
        self.plan.failure, self.plan.action = failure, action
        message = f"attempt {self.attempt}: {failure.message}"
        self.status["lastFailure"] = {
            "attempt": self.attempt,
            "reason": failure.reason,
            "class": failure.failure_class,
            "action": action,
            "exitCode": failure.exit_code,
            "message": message[:4000],
            "time": format_time(self.now),
        }
        lost_gpu_s = goodput.close_run(self.status, self.now, self.num_gpus, failure)
        goodput.open_incident(self.status, failure, self.now, lost_gpu_s)
        self.status["attemptRunningTime"] = None  # accounted for: this attempt is over
        if failure.node_name and failure.failure_class == "Disruption":
            self.avoid_node(failure.node_name, failure.reason)
        if action == "Fail":
            self.fail(failure.reason, f"{message}; failurePolicy action: Fail")
            return
        counter, limit = budget_of(self.spec, action)
        used = int(self.status.get(counter) or 0)
        if used >= limit:
            field_name = LIMIT_FIELDS[counter]
            self.fail(failure.reason, f"{message}; no {counter} left ({field_name}: {limit})")
            return
        delay_s = backoff_seconds(self.spec, used + 1)
        self.plan.delete_jobs.append(job_name)
        self.status.update(
            {
                "attempt": self.attempt + 1,
                counter: used + 1,
                "restartAfter": format_time(self.now + timedelta(seconds=delay_s)),
            }
        )
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
        self.status["rollback"] = {
            "attempt": self.attempt,
            "checkpoints": self.spec.failure_policy.non_finite.rollback_checkpoints,
            "skipDataToStep": failure.step,
        }
        self.status["checkpoint"] = None

    def track_workers(self, pods: list[WorkerPod]) -> None:
        running = [p for p in pods if p.phase in ("Running", "Succeeded") and not p.deleting]
        ready = len([p for p in pods if p.phase == "Running" and not p.deleting])
        self.status["workers"] = {
            "desired": self.nodes,
            "ready": ready,
            "pending": len([p for p in pods if p.phase == "Pending"]),
            "succeeded": len([p for p in pods if p.phase == "Succeeded"]),
            "failed": 0,
        }
        if len(running) >= self.nodes:
            if not self.status.get("attemptRunningTime"):
                self.status["attemptRunningTime"] = format_time(self.now)
                self.plan.incident_closed = goodput.close_incident(
                    self.status, self.now, self.num_gpus
                )
            self.set_phase("Running", "AllWorkersRunning", f"{self.nodes} workers running")
            return
        why = waiting_detail(pods, self.nodes)
        if self.status.get("attemptRunningTime"):
            # The gang ran and is losing a worker (drain, eviction): its failure or exit
            # restarts the gang; the start deadline is over for this attempt.
            self.set_phase("Running", "WorkersDisrupted", why)
        elif not self.check_start_deadline(why):
            phase = "Restarting" if self.old_phase == "Restarting" else "Pending"
            self.set_phase(phase, "WaitingForWorkers", why)

    def check_start_deadline(self, why: str) -> bool:
        deadline_s = self.spec.run_policy.start_deadline_seconds
        if not self.deadline_passed("attemptStartTime", deadline_s):
            return False
        self.fail(
            "StartDeadlineExceeded",
            f"workers not all running after startDeadlineSeconds={deadline_s}: {why}",
        )
        return True


def waiting_detail(pods: list[WorkerPod], nodes: int) -> str:
    running = len([p for p in pods if p.phase in ("Running", "Succeeded") and not p.deleting])
    detail = f"{running}/{nodes} workers running"
    for pod in sorted(pods, key=lambda p: p.index):
        cause = pod.unschedulable_message or pod.waiting_reason
        if cause:
            return f"{detail}; worker {pod.index} (pod {pod.name}): {cause}"
    if not pods:
        detail += "; no worker pods created yet"
    return detail


def plan_reconcile(job: JobState, observed: Observed, now: datetime) -> Plan:
    return _Planner(job, observed, now).run()


def plan_refused_attempt(job: JobState, message: str, now: datetime) -> Plan:
    """The API server refused the attempt's Job as invalid (e.g. a pod template field that the
    CRD passes through): retrying cannot help, so the job fails with the server's words."""
    planner = _Planner(job, Observed(), now)
    planner.set_phase("Failed", "InvalidPodTemplate", f"the worker Job was refused: {message}")
    return planner.plan


def plan_name_in_use(job: JobState, job_name: str, now: datetime) -> Plan:
    """The attempt's Job name is taken by a Job that is not ours (a deleted job of the same
    name, still being collected or orphaned): say so and try again on the next pass."""
    planner = _Planner(job, Observed(), now)
    planner.set_phase(
        str(job.status.get("phase") or "Pending"),
        "WaitingForOldJob",
        f"Job {job_name} belongs to a deleted job of the same name; waiting for it to go "
        f"(delete it if it was orphaned)",
    )
    return planner.plan


def job_name_of(job: JobState, attempt: int) -> str:
    return names.attempt_job_name(job.name, attempt)
