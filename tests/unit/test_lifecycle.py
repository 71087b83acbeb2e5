"""The reconcile decision: phases, gang restarts, suspension, deadlines, TTL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from diffusion_operator.lifecycle import (
    JobState,
    backoff_seconds,
    format_time,
    plan_reconcile,
)
from diffusion_operator.observed import AttemptJob, Observed, WorkerPod
from diffusion_operator.spec import DiffusionTrainingJobSpec, spec_fingerprint
from diffusion_operator.status_patch import dump_status, parse_status

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


def spec_of(**fields) -> DiffusionTrainingJobSpec:
    base = {"image": "trainer:1", "resources": {"nodes": 2}}
    return DiffusionTrainingJobSpec.model_validate({**base, **fields})


def state(status: dict | None = None, **spec_fields) -> JobState:
    return JobState("sd", "ns", 1, spec_of(**spec_fields), parse_status(status))


def status_of(plan) -> dict:
    """The plan's status as it is written to the API server."""
    return dump_status(plan.status)


def running_status(attempt: int = 1, **extra) -> dict:
    return {
        "phase": "Running",
        "attempt": attempt,
        "restarts": attempt - 1,
        "startTime": format_time(NOW - timedelta(minutes=5)),
        "attemptStartTime": format_time(NOW - timedelta(minutes=5)),
        **extra,
    }


def job(attempt: int = 1, **flags) -> AttemptJob:
    return AttemptJob(name=f"sd-a{attempt}", attempt=attempt, suspended=False, **flags)


def pod(index: int, phase: str = "Running", attempt: int = 1, **fields) -> WorkerPod:
    return WorkerPod(
        name=f"sd-a{attempt}-{index}", attempt=attempt, index=index, phase=phase, **fields
    )


def condition(plan, type_: str) -> dict:
    return next(c for c in status_of(plan)["conditions"] if c["type"] == type_)


def test_new_job_creates_attempt_one():
    plan = plan_reconcile(state(), Observed(), NOW)
    assert plan.create_attempt == 1
    assert plan.create_suspended is False
    assert status_of(plan)["phase"] == "Pending"
    assert status_of(plan)["attempt"] == 1
    assert status_of(plan)["observedGeneration"] == 1
    assert [e.reason for e in plan.events] == ["Created"]


def test_all_workers_running_is_running():
    observed = Observed([job()], [pod(0), pod(1)])
    plan = plan_reconcile(state(running_status(phase="Pending")), observed, NOW)
    assert plan.create_attempt is None
    assert status_of(plan)["phase"] == "Running"
    assert condition(plan, "Running")["status"] == "True"
    assert status_of(plan)["workers"]["ready"] == 2


def test_partly_scheduled_stays_pending_with_the_scheduler_message():
    unschedulable = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    observed = Observed([job()], [pod(0), pod(1, "Pending", unschedulable_message=unschedulable)])
    plan = plan_reconcile(state(running_status(phase="Pending")), observed, NOW)
    assert status_of(plan)["phase"] == "Pending"
    running = condition(plan, "Running")
    assert running["status"] == "False"
    assert running["reason"] == "WaitingForWorkers"
    assert unschedulable in running["message"]


def test_complete_job_succeeds():
    observed = Observed([job(complete=True)], [pod(0, "Succeeded"), pod(1, "Succeeded")])
    plan = plan_reconcile(state(running_status()), observed, NOW)
    assert status_of(plan)["phase"] == "Succeeded"
    assert status_of(plan)["completionTime"] == format_time(NOW)
    assert condition(plan, "Succeeded")["status"] == "True"


def test_failure_without_restart_budget_fails_with_exit_code():
    failed = pod(1, "Failed", exit_code=1, exit_reason="Error", exit_message="boom")
    observed = Observed([job()], [pod(0), failed])
    plan = plan_reconcile(state(running_status(), failurePolicy={"maxRestarts": 0}), observed, NOW)
    assert status_of(plan)["phase"] == "Failed"
    failed_condition = condition(plan, "Failed")
    assert failed_condition["reason"] == "WorkerFailed"
    assert "exit code 1: boom" in failed_condition["message"]
    assert "no restarts left (failurePolicy.maxRestarts: 0)" in failed_condition["message"]
    # The Job controller stops the other worker; the failed pod keeps its logs.
    assert plan.delete_jobs == []
    assert plan.create_attempt is None
    again = plan_reconcile(
        JobState("sd", "ns", 1, plan.spec or spec_of(), plan.status), observed, NOW
    )
    assert again.delete_jobs == []


def test_oom_killed_fails_at_once_and_names_the_knobs():
    failed = pod(1, "Failed", exit_code=137, exit_reason="OOMKilled")
    observed = Observed([job()], [pod(0), failed])
    plan = plan_reconcile(state(running_status(), failurePolicy={"maxRestarts": 5}), observed, NOW)
    assert status_of(plan)["phase"] == "Failed"
    message = condition(plan, "Failed")["message"]
    assert condition(plan, "Failed")["reason"] == "OOMKilled"
    assert "microBatchSize" in message and "activationCheckpointing" in message
    assert status_of(plan)["lastFailure"]["class"] == "OOMKilled"
    assert status_of(plan).get("restarts") == 0


def test_failure_with_budget_restarts_the_gang_after_backoff():
    observed = Observed([job()], [pod(0), pod(1, "Failed", exit_code=1)])
    plan = plan_reconcile(state(running_status(), failurePolicy={"maxRestarts": 2}), observed, NOW)
    assert status_of(plan)["phase"] == "Restarting"
    assert status_of(plan)["attempt"] == 2
    assert status_of(plan)["restarts"] == 1
    assert plan.delete_jobs == []  # the Job controller stops the others; the failed pod stays
    assert plan.create_attempt is None  # not before the old pods are gone
    assert status_of(plan)["restartAfter"] == format_time(NOW + timedelta(seconds=10))
    assert status_of(plan)["lastFailure"]["attempt"] == 1
    assert any(e.type == "Warning" for e in plan.events)


def test_next_attempt_waits_for_old_pods():
    status = running_status(attempt=2, phase="Restarting", restartAfter=format_time(NOW))
    observed = Observed([], [pod(0, "Failed", attempt=1, deleting=True)])
    plan = plan_reconcile(state(status), observed, NOW)
    assert plan.create_attempt is None
    assert condition(plan, "Restarting")["reason"] == "WaitingForOldWorkers"


def test_an_attempt_without_a_failed_worker_is_stopped_by_deleting_its_job():
    stalled = pod(1, deleting=True, deletion_requested_at=NOW - timedelta(seconds=10))
    plan = plan_reconcile(state(running_status()), Observed([job()], [pod(0), stalled]), NOW)
    assert status_of(plan)["phase"] == "Restarting"
    assert plan.delete_jobs == ["sd-a1"]


def test_next_attempt_starts_beside_the_kept_failed_workers_of_earlier_attempts():
    status = running_status(attempt=4, phase="Restarting", restartAfter=format_time(NOW))
    ended = [pod(1, "Failed", attempt=a) for a in (1, 2, 3)] + [pod(0, "Succeeded", attempt=3)]
    plan = plan_reconcile(state(status), Observed([job(1), job(2), job(3)], ended), NOW)
    assert plan.create_attempt == 4
    assert plan.delete_jobs == ["sd-a1"]  # only the latest two failed attempts are kept


def test_next_attempt_waits_for_backoff():
    later = NOW + timedelta(seconds=30)
    status = running_status(attempt=2, phase="Restarting", restartAfter=format_time(later))
    plan = plan_reconcile(state(status), Observed(), NOW)
    assert plan.create_attempt is None
    assert plan.requeue_after_s == 30


def test_next_attempt_resumes_from_latest_checkpoint():
    status = running_status(
        attempt=2,
        phase="Restarting",
        restartAfter=format_time(NOW - timedelta(seconds=1)),
        checkpoint={"latestUri": "/ckpt/step-00000050", "step": 50},
    )
    plan = plan_reconcile(state(status), Observed(), NOW)
    assert plan.create_attempt == 2
    assert plan.resume_from == "/ckpt/step-00000050"
    assert plan.status.restart_after is None


def test_leftover_older_job_is_deleted():
    status = running_status(attempt=2, phase="Restarting")
    plan = plan_reconcile(state(status), Observed([job(1)], []), NOW)
    assert plan.delete_jobs == ["sd-a1"]
    assert plan.create_attempt is None or plan.create_attempt == 2


def test_suspend_suspends_the_running_attempt_and_resume_unsuspends():
    observed = Observed([job()], [pod(0), pod(1)])
    suspended = plan_reconcile(state(running_status(), runPolicy={"suspend": True}), observed, NOW)
    assert suspended.set_suspend == {"sd-a1": True}
    assert status_of(suspended)["phase"] == "Suspended"
    suspended_job = AttemptJob(name="sd-a1", attempt=1, suspended=True)
    resumed = plan_reconcile(
        state(running_status(phase="Suspended")), Observed([suspended_job], []), NOW
    )
    assert resumed.set_suspend == {"sd-a1": False}
    assert status_of(resumed)["phase"] == "Pending"
    assert status_of(resumed)["attemptStartTime"] == format_time(NOW)
    assert status_of(resumed)["startTime"] == format_time(NOW)


def test_resume_after_a_spec_change_replaces_the_suspended_attempt():
    before = spec_of(runPolicy={"suspend": True})
    suspended_job = AttemptJob(
        name="sd-a1", attempt=1, suspended=True, spec_hash=spec_fingerprint(before)
    )
    status = running_status(phase="Suspended")
    same = plan_reconcile(state(status), Observed([suspended_job], []), NOW)
    assert same.set_suspend == {"sd-a1": False}  # only suspension changed: unsuspend
    changed = plan_reconcile(
        state(status, resources={"nodes": 4}), Observed([suspended_job], []), NOW
    )
    assert changed.set_suspend == {}
    assert changed.delete_jobs == ["sd-a1"]
    assert status_of(changed)["attempt"] == 2
    assert status_of(changed)["restarts"] == 0  # not a failure
    assert condition(changed, "Running")["reason"] == "SpecChanged"
    recreated = plan_reconcile(state(status_of(changed), resources={"nodes": 4}), Observed(), NOW)
    assert recreated.create_attempt == 2
    assert status_of(recreated)["phase"] == "Pending"  # a new spec, not a failure


def test_active_deadline_does_not_count_time_suspended():
    long_ago = format_time(NOW - timedelta(hours=2))
    suspended_job = AttemptJob(name="sd-a1", attempt=1, suspended=True)
    status = running_status(phase="Suspended", startTime=long_ago)
    deadline = {"activeDeadlineSeconds": 3600}
    still_suspended = plan_reconcile(
        state(status, runPolicy={"suspend": True, **deadline}), Observed([suspended_job], []), NOW
    )
    assert status_of(still_suspended)["phase"] == "Suspended"
    resumed = plan_reconcile(state(status, runPolicy=deadline), Observed([suspended_job], []), NOW)
    assert status_of(resumed)["phase"] == "Pending"
    assert resumed.set_suspend == {"sd-a1": False}
    admitted_job = AttemptJob(name="sd-a1", attempt=1, suspended=False)
    admitted = plan_reconcile(
        state(status, runPolicy={"queueName": "gpus", **deadline}),
        Observed([admitted_job], [pod(0), pod(1)]),
        NOW,
    )
    assert status_of(admitted)["phase"] == "Running"
    assert status_of(admitted)["startTime"] == format_time(NOW)


def test_queued_job_is_created_suspended_and_left_to_kueue():
    plan = plan_reconcile(state(runPolicy={"queueName": "gpus"}), Observed(), NOW)
    assert plan.create_suspended is True
    assert condition(plan, "Suspended")["reason"] == "WaitingForQueue"
    queued = AttemptJob(name="sd-a1", attempt=1, suspended=True)
    plan = plan_reconcile(
        state(running_status(phase="Suspended"), runPolicy={"queueName": "gpus"}),
        Observed([queued], []),
        NOW,
    )
    assert plan.set_suspend == {}


def test_start_deadline_fails_with_the_reason():
    status = running_status(phase="Pending", attemptStartTime=format_time(NOW - timedelta(hours=1)))
    message = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    observed = Observed([job()], [pod(0, "Pending", unschedulable_message=message)])
    plan = plan_reconcile(state(status, runPolicy={"startDeadlineSeconds": 60}), observed, NOW)
    assert status_of(plan)["phase"] == "Failed"
    failed = condition(plan, "Failed")
    assert failed["reason"] == "StartDeadlineExceeded"
    assert "Insufficient nvidia.com/gpu" in failed["message"]
    assert plan.delete_jobs == ["sd-a1"]


def test_start_deadline_ends_once_the_gang_has_run():
    long_ago = format_time(NOW - timedelta(hours=5))
    deadline = {"startDeadlineSeconds": 600}
    status = running_status(attemptStartTime=long_ago)
    ran = plan_reconcile(
        state(status, runPolicy=deadline), Observed([job()], [pod(0), pod(1)]), NOW
    )
    assert status_of(ran)["attemptRunningTime"] == format_time(NOW)
    drained = Observed([job()], [pod(0), pod(1, deleting=True)])
    plan = plan_reconcile(state(status_of(ran), runPolicy=deadline), drained, NOW)
    # A drained worker ends the attempt as a disruption, never as a missed start deadline.
    assert status_of(plan)["phase"] == "Restarting"
    assert condition(plan, "Restarting")["reason"] == "WorkerTerminating"
    assert (status_of(plan)["restarts"], status_of(plan)["disruptions"]) == (0, 1)
    assert plan.delete_jobs == ["sd-a1"]


def test_active_deadline_fails_and_stops_workers():
    status = running_status(startTime=format_time(NOW - timedelta(seconds=120)))
    observed = Observed([job()], [pod(0), pod(1)])
    plan = plan_reconcile(state(status, runPolicy={"activeDeadlineSeconds": 60}), observed, NOW)
    assert condition(plan, "Failed")["reason"] == "DeadlineExceeded"
    assert plan.delete_jobs == ["sd-a1"]


def test_a_failed_job_whose_workers_were_not_stopped_stops_them_on_the_next_pass():
    failed = {**running_status(), "phase": "Failed", "completionTime": format_time(NOW)}
    observed = Observed([job(), AttemptJob(name="sd-a0", attempt=0, suspended=False, failed=True)])
    plan = plan_reconcile(state(failed), observed, NOW)
    assert plan.delete_jobs == ["sd-a1"]  # the failed one keeps its pods for their logs
    assert status_of(plan)["phase"] == "Failed"


def test_pods_of_a_deleted_namesake_hold_back_the_next_attempt():
    plan = plan_reconcile(state(), Observed(num_foreign_pods=2), NOW)
    assert plan.create_attempt is None
    assert condition(plan, "Running")["reason"] == "WaitingForOldWorkers"
    assert "deleted job with the same name" in condition(plan, "Running")["message"]
    assert plan_reconcile(state(status_of(plan)), Observed(), NOW).create_attempt == 1


def test_ttl_deletes_a_finished_job_only_when_due():
    finished = {"phase": "Succeeded", "completionTime": format_time(NOW - timedelta(seconds=30))}
    due = plan_reconcile(
        state(finished, runPolicy={"ttlSecondsAfterFinished": 10}), Observed(), NOW
    )
    assert due.delete_self is True
    early = plan_reconcile(
        state(finished, runPolicy={"ttlSecondsAfterFinished": 60}), Observed(), NOW
    )
    assert early.delete_self is False
    assert early.requeue_after_s == 30


def test_job_created_before_a_lost_status_patch_is_adopted():
    plan = plan_reconcile(state({}), Observed([job()], []), NOW)
    assert plan.create_attempt is None
    assert status_of(plan)["attempt"] == 1


def test_invalid_spec_fails_without_children():
    job_state = JobState(
        "sd", "ns", 1, spec_of(), parse_status({}), config_error="spec.training.x: bad"
    )
    plan = plan_reconcile(job_state, Observed(), NOW)
    assert status_of(plan)["phase"] == "Failed"
    assert condition(plan, "Failed")["reason"] == "InvalidSpec"
    assert plan.create_attempt is None


def test_unrenderable_edit_keeps_the_running_attempt_until_it_needs_a_new_one():
    error = "spec.training.microBatchSize: 24 does not divide the batch"
    observed = Observed([job()], [pod(0), pod(1)])
    running = JobState("sd", "ns", 2, spec_of(), parse_status(running_status()), config_error=error)
    plan = plan_reconcile(running, observed, NOW)
    assert status_of(plan)["phase"] == "Running"
    assert status_of(plan)["specError"] == error
    assert [e.reason for e in plan.events] == ["SpecRejected"]
    assert plan.delete_jobs == []
    again = plan_reconcile(JobState("sd", "ns", 2, spec_of(), plan.status, error), observed, NOW)
    assert again.events == []  # reported once
    restarting = running_status(attempt=2, phase="Restarting", restartAfter=format_time(NOW))
    plan = plan_reconcile(
        JobState("sd", "ns", 2, spec_of(), parse_status(restarting), config_error=error),
        Observed(),
        NOW,
    )
    assert status_of(plan)["phase"] == "Failed"
    assert condition(plan, "Failed")["reason"] == "InvalidSpec"
    assert plan.create_attempt is None


def test_backoff_doubles_up_to_the_cap():
    spec = spec_of(failurePolicy={"backoffSeconds": 10, "maxBackoffSeconds": 35})
    assert [backoff_seconds(spec, n) for n in (1, 2, 3, 4)] == [10, 20, 35, 35]


def test_condition_transition_time_is_kept_while_status_holds():
    first = plan_reconcile(
        state(running_status(phase="Pending")), Observed([job()], [pod(0), pod(1)]), NOW
    )
    later = NOW + timedelta(minutes=1)
    second = plan_reconcile(state(first.status), Observed([job()], [pod(0), pod(1)]), later)
    assert condition(second, "Running")["lastTransitionTime"] == format_time(NOW)
    assert second.events == []
