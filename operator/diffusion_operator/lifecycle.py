"""Decide what a job needs next, from its spec, its status and what exists: a pure function.

Level-based: every call re-derives the plan from the observed state, so a missed event or an
operator restart never stalls a job, and running it twice does no harm (names are fixed, creation
tolerates AlreadyExists). How an attempt ended is `attempt_end`'s and `failures`' business, what
that costs is `failure_response`'s; this module runs a job through its phases.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from diffusion_operator import goodput, names
from diffusion_operator.attempt_end import AttemptWatch
from diffusion_operator.conditions import CREATE_REFUSED, set_condition
from diffusion_operator.failure_response import FailureResponse
from diffusion_operator.observed import AttemptJob, Observed, WorkerPod
from diffusion_operator.planner_core import JobEvent, JobState, Plan, backoff_seconds
from diffusion_operator.progress import newer_checkpoint
from diffusion_operator.spec import spec_fingerprint
from diffusion_operator.status_types import Phase, Workers
from diffusion_operator.timefmt import format_time, parse_time

# What callers import from here: the plan's types live in planner_core.
__all__ = [
    "JobEvent",
    "JobState",
    "Plan",
    "backoff_seconds",
    "plan_create_refused",
    "plan_name_in_use",
    "plan_reconcile",
    "plan_refused_attempt",
]


class _Planner(FailureResponse):
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
        if error and error != self.status.spec_error:
            self.plan.events.append(
                JobEvent("Warning", "SpecRejected", f"{error}; the running attempt continues")
            )
        self.status.spec_error = error

    def finish_terminal(self) -> None:
        if self.old_phase == "Failed":
            # Level-based: a delete that did not happen when the job failed happens now.
            self.plan.delete_jobs.extend(
                job.name
                for job in self.observed.jobs
                if not (job.finished or job.deleting or self.has_failed_worker(job.attempt))
            )
        ttl = self.spec.run_policy.ttl_seconds_after_finished
        finished = parse_time(self.status.completion_time)
        if ttl is None or finished is None:
            return
        remaining_s = (finished + timedelta(seconds=ttl) - self.now).total_seconds()
        if remaining_s <= 0:
            self.plan.delete_self = True
        else:
            self.requeue(remaining_s)

    def deadline_passed(self, started_at: str | None, deadline_s: int | None) -> bool:
        """True once deadline_s have passed since started_at; else come back then."""
        started = parse_time(started_at)
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
        if self.old_phase == "Suspended" or not self.deadline_passed(
            self.status.start_time, deadline_s
        ):
            return False
        self.fail("DeadlineExceeded", f"job ran longer than activeDeadlineSeconds={deadline_s}")
        return True

    def adopt_newer_attempt(self) -> None:
        """A Job newer than status says exists (status patch lost in a crash): adopt it."""
        latest = self.observed.latest_attempt()
        if latest > self.attempt:
            if self.attempt == 0:
                self.status.start_time = self.status.start_time or format_time(self.now)
                self.status.attempt_start_time = self.status.attempt_start_time or format_time(
                    self.now
                )
            self.status.attempt = latest

    def start_first_attempt(self) -> None:
        self.status.attempt = 1
        self.status.start_time = format_time(self.now)
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
        checkpoint = self.status.checkpoint
        self.plan.create_attempt = attempt
        self.plan.create_suspended = suspended
        self.plan.resume_from = checkpoint.latest_uri if checkpoint else None
        self.plan.avoid_nodes = self.nodes_to_avoid()
        rollback = self.status.rollback
        if rollback is not None and rollback.attempt == attempt:
            self.plan.resume_from = None  # the trainer picks the older checkpoint itself
            self.plan.trainer_env = {"DTJ_ROLLBACK_CHECKPOINTS": str(rollback.checkpoints)}
            if rollback.skip_data_to_step is not None:
                self.plan.trainer_env["DTJ_DATA_SKIP_TO_STEP"] = str(rollback.skip_data_to_step)
        self.status.attempt_start_time = format_time(self.now)
        self.status.attempt_running_time = None
        self.forget_activity()
        self.status.restart_after = None
        self.status.workers = Workers(desired=self.spec.resources.nodes, ready=0)
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

    def start_next_attempt(self) -> None:
        """Attempt N's Job is missing: clean up older attempts (but the latest failed ones,
        kept for their logs), wait for their workers to stop, back off."""
        kept = self.kept_attempts()
        for job in self.observed.jobs:
            if job.attempt < self.attempt and not job.deleting and job.attempt not in kept:
                self.plan.delete_jobs.append(job.name)
        leftovers = [
            p
            for p in self.observed.pods_before(self.attempt)
            if p.deleting or p.phase not in ("Failed", "Succeeded")
        ]
        if leftovers:
            self.force_delete_stuck(leftovers)
            message = f"waiting for {len(leftovers)} worker pods of earlier attempts to terminate"
            self.set_phase("Restarting", "WaitingForOldWorkers", message)
            self.requeue(1.0)
            return
        restart_after = parse_time(self.status.restart_after)
        if restart_after and restart_after > self.now:
            self.requeue((restart_after - self.now).total_seconds())
            return
        self.create_attempt(self.attempt)

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

    def forget_activity(self) -> None:
        """New workers are starting: what the old ones were doing must not count towards a
        hang until the new rank 0 reports (its start-up is never a hang)."""
        if self.status.progress is not None:
            self.status.progress = self.status.progress.model_copy(update={"activity": None})

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
            newer = newer_checkpoint(self.status.checkpoint, reading)
            if newer:
                self.status.checkpoint = newer

    def mark_resumed(self) -> None:
        """Both deadlines restart: time spent suspended or queued is not running time."""
        self.status.start_time = format_time(self.now)
        self.status.attempt_start_time = format_time(self.now)
        self.status.attempt_running_time = None  # suspension deleted the pods
        self.forget_activity()

    def track_suspended(self, job: AttemptJob) -> None:
        queued = bool(self.spec.run_policy.queue_name) and not self.spec.run_policy.suspend
        if queued and self.spec_changed(job):
            # Kueue admits and resumes the Job as it is: it must carry the new spec.
            self.replace_suspended(job, "requeued")
            return
        if self.spec.run_policy.suspend or queued:
            self.set_suspended()
            return
        self.mark_resumed()
        if self.spec_changed(job):
            # Unsuspending would run the old shape (nodes, image, ...) with the new config.
            self.replace_suspended(job, "resuming")
            return
        self.plan.set_suspend[job.name] = False
        self.set_phase("Pending", "Resumed", "resumed; waiting for workers")

    def spec_changed(self, job: AttemptJob) -> bool:
        return job.spec_hash is not None and job.spec_hash != spec_fingerprint(self.spec)

    def replace_suspended(self, job: AttemptJob, how: str) -> None:
        """A suspended attempt built from an older spec: delete it; the next pass creates
        the next attempt from the spec as it is now (suspended again if queued)."""
        self.plan.delete_jobs.append(job.name)
        self.status.attempt, self.status.restart_after = self.attempt + 1, None
        self.set_phase(
            "Pending",
            "SpecChanged",
            f"the spec changed while suspended: {how} as attempt {self.attempt}",
        )

    def track_workers(self, pods: list[WorkerPod]) -> None:
        running = [p for p in pods if p.phase in ("Running", "Succeeded") and not p.deleting]
        ready = len([p for p in pods if p.phase == "Running" and not p.deleting])
        self.status.workers = Workers(
            desired=self.nodes,
            ready=ready,
            pending=len([p for p in pods if p.phase == "Pending"]),
            succeeded=len([p for p in pods if p.phase == "Succeeded"]),
            failed=0,
        )
        if len(running) >= self.nodes:
            if not self.status.attempt_running_time:
                self.status.attempt_running_time = format_time(self.now)
                self.plan.incident_closed = goodput.close_incident(
                    self.status, self.now, self.num_gpus
                )
            self.set_phase("Running", "AllWorkersRunning", f"{self.nodes} workers running")
            return
        why = waiting_detail(pods, self.nodes)
        if self.status.attempt_running_time:
            # The gang ran and is losing a worker (drain, eviction): its failure or exit
            # restarts the gang; the start deadline is over for this attempt.
            self.set_phase("Running", "WorkersDisrupted", why)
        elif not self.check_start_deadline(why):
            phase: Phase = "Restarting" if self.old_phase == "Restarting" else "Pending"
            self.set_phase(phase, "WaitingForWorkers", why)

    def check_start_deadline(self, why: str) -> bool:
        deadline_s = self.spec.run_policy.start_deadline_seconds
        if not self.deadline_passed(self.status.attempt_start_time, deadline_s):
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


def plan_create_refused(job: JobState, what: str, message: str, now: datetime) -> Plan:
    """A create the API server refused (quota, policy, rate limit): the server's words in
    the CreateRefused condition and an Event; the pass is retried later."""
    planner = _Planner(job, Observed(), now)
    text = f"creating {what} was refused: {message}"
    planner.set_phase(job.status.phase or "Pending", "CreateRefused", text)
    planner.status.conditions = set_condition(
        planner.status.conditions,
        CREATE_REFUSED,
        status=True,
        reason="CreateRefused",
        message=text,
        now=format_time(now),
        generation=job.generation,
    )
    if job.status.condition_message(CREATE_REFUSED) != text:
        planner.plan.events.append(JobEvent("Warning", "CreateRefused", text))
    return planner.plan


def plan_name_in_use(job: JobState, job_name: str, now: datetime) -> Plan:
    """The attempt's Job name is taken by a Job that is not ours (a deleted job of the same
    name, still being collected or orphaned): say so and try again on the next pass."""
    planner = _Planner(job, Observed(), now)
    planner.set_phase(
        job.status.phase or "Pending",
        "WaitingForOldJob",
        f"Job {job_name} belongs to a deleted job of the same name; waiting for it to go "
        f"(delete it if it was orphaned)",
    )
    return planner.plan


def job_name_of(job: JobState, attempt: int) -> str:
    return names.attempt_job_name(job.name, attempt)
