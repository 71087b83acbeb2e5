"""Failure classes, actions and budgets; node loss, stuck pods, hangs, rollback, goodput."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from test_lifecycle import NOW, condition, job, pod, running_status, state, status_of

from diffusion_operator.attempt_end import stuck_pods
from diffusion_operator.failures import Failure, choose_action, classify_pod, parse_summary
from diffusion_operator.lifecycle import JobState, plan_reconcile
from diffusion_operator.observed import NodeHealth, Observed
from diffusion_operator.spec import FailurePolicy
from diffusion_operator.timefmt import format_time


def summary(**fields) -> str:
    return json.dumps({"status": "failed", "exitCode": 1, "step": 70, **fields})


def failed(index: int = 1, **fields):
    return pod(index, "Failed", finished_at=NOW - timedelta(seconds=3), **fields)


def end_attempt(*pods, status: dict | None = None, nodes=None, **policy):
    observed = Observed([job()], [pod(0), *pods], nodes=nodes or {})
    spec_fields = {"failurePolicy": {"maxRestarts": 2, **policy}}
    return plan_reconcile(state(status or running_status(), **spec_fields), observed, NOW)


@pytest.mark.parametrize(
    ("fields", "klass", "reason"),
    [
        (
            {"exit_code": 1, "exit_message": summary(failureClass="ConfigError")},
            "ConfigError",
            "ConfigError",
        ),
        ({"exit_code": 2}, "ConfigError", "ConfigError"),
        (
            {"exit_code": 1, "exit_message": summary(failureClass="NonFinite")},
            "NonFinite",
            "NonFinite",
        ),
        ({"exit_code": 1, "exit_message": summary(failureClass="Hang")}, "Hang", "Hang"),
        ({"exit_code": 137, "exit_reason": "OOMKilled"}, "OOMKilled", "OOMKilled"),
        (
            {"exit_code": 1, "exit_message": "torch.OutOfMemoryError: CUDA out of memory"},
            "OOMKilled",
            "GpuOutOfMemory",
        ),
        (
            {"exit_code": 143, "disruption_reason": "PreemptionByScheduler"},
            "Disruption",
            "PreemptionByScheduler",
        ),
        ({"exit_code": 143}, "Disruption", "WorkerTerminated"),
        ({"exit_code": 1, "exit_message": "Traceback ..."}, "Error", "WorkerFailed"),
    ],
)
def test_classify_pod(fields, klass, reason):
    message = fields.get("exit_message")
    failure = classify_pod(failed(**fields, summary=parse_summary(message)))
    assert (failure.failure_class, failure.reason) == (klass, reason)


def test_rules_override_defaults_in_order_first_match_wins():
    policy = FailurePolicy.model_validate(
        {
            "rules": [
                {"action": "Fail", "onReasons": ["PreemptionByScheduler"], "onExitCodes": [9]},
                {"action": "Restart", "onClasses": ["OOMKilled"]},
                {"action": "Fail", "onClasses": ["OOMKilled"]},
            ]
        }
    )
    oom = Failure("OOMKilled", "OOMKilled", "", exit_code=137)
    preempted = Failure("Disruption", "PreemptionByScheduler", "", exit_code=143)
    assert choose_action(policy, oom) == "Restart"
    assert choose_action(policy, preempted) == "RestartNotCounted"  # exit code did not match
    assert choose_action(FailurePolicy(), Failure("Error", "WorkerFailed", "")) == "Restart"


def test_disruption_restarts_without_spending_max_restarts():
    plan = end_attempt(failed(exit_code=143, disruption_reason="PreemptionByScheduler"))
    assert status_of(plan)["phase"] == "Restarting"
    assert (status_of(plan)["restarts"], status_of(plan)["disruptions"]) == (0, 1)
    assert status_of(plan)["lastFailure"]["class"] == "Disruption"
    assert status_of(plan)["lastFailure"]["action"] == "RestartNotCounted"
    assert "not counted" in condition(plan, "Restarting")["message"]


def test_disruptions_have_their_own_cap():
    status = running_status(disruptions=3)
    plan = end_attempt(
        failed(exit_code=143, disruption_reason="EvictionByEvictionAPI"),
        status=status,
        maxDisruptions=3,
    )
    assert status_of(plan)["phase"] == "Failed"
    assert "failurePolicy.maxDisruptions: 3" in condition(plan, "Failed")["message"]


def test_config_error_fails_at_once_with_the_trainer_message():
    message = summary(failureClass="ConfigError", message="data.train.local holds no MDS dataset")
    plan = end_attempt(failed(exit_code=1, summary=parse_summary(message)))
    assert status_of(plan)["phase"] == "Failed"
    assert condition(plan, "Failed")["reason"] == "ConfigError"
    assert "holds no MDS dataset" in condition(plan, "Failed")["message"]
    assert status_of(plan).get("restarts") == 0


def test_the_trainer_class_explains_the_attempt_before_its_peers_plain_errors():
    root = failed(1, exit_code=1, summary=parse_summary(summary(failureClass="Hang")))
    peer = pod(2, "Failed", exit_code=1, finished_at=NOW - timedelta(seconds=30))
    plan = end_attempt(root, peer)
    assert status_of(plan)["lastFailure"]["reason"] == "Hang"


def test_non_finite_rolls_back_past_the_offending_step():
    status = running_status(checkpoint={"latestUri": "/c/step-00000060", "step": 60})
    message = summary(failureClass="NonFinite", step=73)
    plan = end_attempt(failed(exit_code=1, summary=parse_summary(message)), status=status)
    assert status_of(plan)["rollbacks"] == 1 and status_of(plan)["restarts"] == 0
    assert status_of(plan)["rollback"] == {"attempt": 2, "checkpoints": 1, "skipDataToStep": 73}
    assert plan.status.checkpoint is None  # the newer checkpoints are abandoned
    leftovers_gone = Observed([job(deleting=True)], [])
    again = plan_reconcile(
        state({**status_of(plan), "restartAfter": format_time(NOW)}, failurePolicy={}),
        leftovers_gone,
        NOW,
    )
    assert again.create_attempt == 2
    assert again.resume_from is None
    assert again.trainer_env == {"DTJ_ROLLBACK_CHECKPOINTS": "1", "DTJ_DATA_SKIP_TO_STEP": "73"}


def test_rollbacks_are_bounded():
    status = running_status(rollbacks=1)
    message = summary(failureClass="NonFinite", step=73)
    plan = end_attempt(
        failed(exit_code=1, summary=parse_summary(message)),
        status=status,
        nonFinite={"maxRollbacks": 1},
    )
    assert status_of(plan)["phase"] == "Failed"
    assert "nonFinite.maxRollbacks: 1" in condition(plan, "Failed")["message"]


def test_failure_target_ends_the_attempt_while_a_pod_is_still_terminating():
    stuck = pod(1, deleting=True, node_name="n1", deletion_requested_at=NOW)
    observed = Observed([job(failure_target=True)], [pod(0), stuck])
    plan = plan_reconcile(state(running_status()), observed, NOW)
    assert status_of(plan)["phase"] == "Restarting"
    assert plan.delete_jobs == ["sd-a1"]


def test_a_failed_job_waits_briefly_for_the_pod_that_failed_it():
    def plan_at(failing_for_s: float):
        failing = job(failure_target=True, failing_since=NOW - timedelta(seconds=failing_for_s))
        observed = Observed([failing], [pod(0), pod(1)])
        return plan_reconcile(state(running_status()), observed, NOW)

    waiting = plan_at(1)
    assert status_of(waiting)["phase"] == "Running"
    assert waiting.requeue_after_s == pytest.approx(4)
    settled = plan_at(6)
    assert condition(settled, "Restarting")["reason"] == "JobFailed"


def test_a_worker_on_a_not_ready_node_ends_the_attempt_after_the_timeout():
    since = NOW - timedelta(seconds=20)
    unwell = pod(1, node_name="gpu-7", not_ready_since=since)
    nodes = {"gpu-7": NodeHealth(ready=False, not_ready_since=since, reason="NodeStatusUnknown")}
    waiting = end_attempt(unwell, nodes=nodes, nodeNotReadyTimeoutSeconds=60)
    assert status_of(waiting)["phase"] == "Running"
    assert waiting.requeue_after_s == pytest.approx(40)
    plan = end_attempt(unwell, nodes=nodes, nodeNotReadyTimeoutSeconds=10)
    assert condition(plan, "Restarting")["reason"] == "NodeNotReady"
    assert status_of(plan)["disruptions"] == 1
    assert [n["name"] for n in status_of(plan)["avoidedNodes"]] == ["gpu-7"]
    assert status_of(plan)["incidents"][-1]["detectSeconds"] == 20


def test_a_ready_node_is_not_blamed_for_an_unready_pod():
    unwell = pod(1, node_name="gpu-7", not_ready_since=NOW - timedelta(hours=1))
    plan = end_attempt(unwell, nodes={"gpu-7": NodeHealth()}, nodeNotReadyTimeoutSeconds=10)
    assert status_of(plan)["phase"] == "Running"


def test_a_deleted_node_is_a_node_lost_disruption():
    gone = pod(1, node_name="gpu-7", not_ready_since=NOW)
    plan = end_attempt(gone, nodes={"gpu-7": NodeHealth(exists=False, ready=False)})
    assert condition(plan, "Restarting")["reason"] == "NodeLost"


def test_a_vanished_worker_ends_a_gang_that_ran():
    status = running_status(attemptRunningTime=format_time(NOW - timedelta(minutes=1)))
    observed = Observed([job()], [pod(0)])
    plan = plan_reconcile(state(status), observed, NOW)
    assert condition(plan, "Restarting")["reason"] == "WorkerLost"


def test_stuck_pods_on_dead_nodes_are_force_deleted_past_the_bound():
    spec = state(failurePolicy={"podTerminationTimeoutSeconds": 30}).spec
    dead = {"gpu-7": NodeHealth(ready=False), "gpu-1": NodeHealth()}
    old = NOW - timedelta(seconds=31)
    pods = [
        pod(0, attempt=1, node_name="gpu-7", deleting=True, deletion_requested_at=old),
        pod(1, attempt=1, node_name="gpu-1", deleting=True, deletion_requested_at=old),
        pod(2, attempt=1, node_name="gpu-7", deleting=True, deletion_requested_at=NOW),
    ]
    stuck, due_s = stuck_pods(spec, pods, Observed(nodes=dead), NOW)
    assert [p.index for p in stuck] == [0]  # gpu-1 is Ready: its kubelet finishes the job
    assert due_s == [30]


def test_next_attempt_force_deletes_stuck_workers_and_prefers_other_nodes():
    old = NOW - timedelta(minutes=5)
    stuck = pod(
        1, attempt=1, node_name="gpu-7", deleting=True, deletion_requested_at=old, uid="u-1"
    )
    until = format_time(NOW + timedelta(hours=1))
    status = {
        **running_status(attempt=2),
        "phase": "Restarting",
        "avoidedNodes": [{"name": "gpu-7", "reason": "NodeNotReady", "until": until}],
    }
    observed = Observed([], [stuck], nodes={"gpu-7": NodeHealth(ready=False)})
    plan = plan_reconcile(state(status), observed, NOW)
    assert plan.force_delete_pods == [("sd-a1-1", "u-1")]
    assert [e.reason for e in plan.events] == ["ForceDeletedWorker"]
    assert plan.create_attempt is None  # only once it is gone
    created = plan_reconcile(state(status), Observed(), NOW)
    assert created.create_attempt == 2
    assert created.avoid_nodes == ["gpu-7"]


def test_expired_node_avoidance_is_dropped():
    status = {
        **running_status(attempt=2),
        "phase": "Restarting",
        "avoidedNodes": [{"name": "gpu-7", "reason": "NodeLost", "until": format_time(NOW)}],
    }
    created = plan_reconcile(state(status), Observed(), NOW)
    assert created.avoid_nodes == []
    assert created.status.avoided_nodes is None


def hang_status(idle_s: float, activity: str = "training", step: int | None = 40) -> dict:
    return running_status(
        attemptRunningTime=format_time(NOW - timedelta(hours=1)),
        progress={
            "step": step,
            "activity": activity,
            "stepAdvancedAt": format_time(NOW - timedelta(seconds=idle_s)),
        },
    )


def test_a_step_that_stops_advancing_is_a_hang_after_the_backstop_delay():
    observed = Observed([job()], [pod(0), pod(1)])
    spec_fields = {"failurePolicy": {"hangTimeoutSeconds": 100, "maxRestarts": 1}}
    early = plan_reconcile(state(hang_status(110), **spec_fields), observed, NOW)
    assert "lastFailure" not in early.status  # not decided yet
    assert early.requeue_after_s == pytest.approx(15)
    hung = plan_reconcile(state(hang_status(126), **spec_fields), observed, NOW)
    assert condition(hung, "Restarting")["reason"] == "StepStalled"
    assert status_of(hung)["lastFailure"]["class"] == "Hang"
    assert status_of(hung)["restarts"] == 1
    saving = plan_reconcile(state(hang_status(500, "checkpointing"), **spec_fields), observed, NOW)
    assert status_of(saving)["phase"] == "Running"


def test_the_final_checkpoint_comes_from_the_trainer_summary():
    status = running_status(checkpoint={"latestUri": "/c/step-00000040", "step": 40})
    final = summary(status="completed", lastCheckpoint="/c/step-00000060", lastCheckpointStep=60)
    done = pod(0, "Succeeded", summary=parse_summary(final), finished_at=NOW)
    plan = plan_reconcile(state(status), Observed([job(complete=True)], [done]), NOW)
    assert status_of(plan)["phase"] == "Succeeded"
    assert status_of(plan)["checkpoint"]["step"] == 60
    assert status_of(plan)["checkpoint"]["latestUri"] == "/c/step-00000060"


def test_goodput_counts_work_since_the_last_checkpoint_as_lost():
    ran_at = NOW - timedelta(seconds=100)
    status = running_status(
        attemptRunningTime=format_time(ran_at),
        checkpoint={"step": 10, "time": format_time(NOW - timedelta(seconds=30))},
    )
    gpus = {"resources": {"nodes": 2, "gpusPerNode": 8}}
    observed = Observed([job()], [pod(0), pod(1, "Failed", exit_code=1, finished_at=NOW)])
    settling = plan_reconcile(state(status, **gpus), observed, NOW)
    assert status_of(settling)["phase"] == "Running"  # a plain error waits for its peers' news
    assert settling.requeue_after_s == pytest.approx(5)
    decided = NOW + timedelta(seconds=5)
    plan = plan_reconcile(state(status, **gpus), observed, decided)
    goodput = status_of(plan)["goodput"]
    assert goodput["allocatedGpuSeconds"] == 1680  # 105 s x 16 GPUs
    assert goodput["lostGpuSeconds"] == 480  # 30 s since the checkpoint x 16
    assert goodput["productiveGpuSeconds"] == 1200
    assert status_of(plan)["incidents"][-1]["detectSeconds"] == 5
    later = decided + timedelta(seconds=20)
    recovered = plan_reconcile(
        state({**status_of(plan), "phase": "Restarting"}, **gpus),
        Observed([job(attempt=2)], [pod(0, attempt=2), pod(1, attempt=2)]),
        later,
    )
    incident = recovered.incident_closed
    assert incident is not None and incident.recover_seconds == 20
    assert status_of(recovered)["goodput"]["lostGpuSeconds"] == 480 + 20 * 16


def test_worker_env_carries_the_failure_policy_once():
    from diffusion_operator.builders import Owner
    from diffusion_operator.worker_job import AttemptInputs, build_worker_job

    spec = state(
        failurePolicy={"hangTimeoutSeconds": 600},
        runPolicy={"terminationGracePeriodSeconds": 120},
        resources={
            "nodes": 2,
            "affinity": {
                "nodeAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 1,
                            "preference": {
                                "matchExpressions": [
                                    {"key": "zone", "operator": "In", "values": ["a"]}
                                ]
                            },
                        }
                    ]
                }
            },
        },
    ).spec
    inputs = AttemptInputs(
        attempt=3, avoid_nodes=["gpu-7"], trainer_env={"DTJ_ROLLBACK_CHECKPOINTS": "1"}
    )
    pod = build_worker_job(Owner("sd", "ns", "uid-1"), spec, inputs)["spec"]["template"]["spec"]
    names = [e["name"] for e in pod["containers"][0]["env"]]
    assert len(names) == len(set(names))
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["DTJ_HANG_TIMEOUT_S"] == "600"
    assert env["DTJ_COLLECTIVE_TIMEOUT_S"] == "1200"  # after the watchdog and the backstop
    assert env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "110"  # the grace period, less a margin
    assert env["DTJ_ROLLBACK_CHECKPOINTS"] == "1"
    preferred = pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred[0]["weight"] == 1  # the user's own preference is kept
    assert preferred[1]["preference"]["matchExpressions"] == [
        {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["gpu-7"]}
    ]


def test_a_worker_stopped_by_the_job_controller_does_not_hide_the_real_cause():
    crashed = failed(1, exit_code=1, exit_message="Traceback: boom")
    stopped = pod(0, "Failed", exit_code=143, finished_at=NOW)  # SIGTERM, no DisruptionTarget
    plan = plan_reconcile(state(running_status()), Observed([job()], [stopped, crashed]), NOW)
    assert status_of(plan)["lastFailure"]["reason"] == "WorkerFailed"
    assert status_of(plan)["restarts"] == 1


def test_a_summary_that_arrives_while_settling_names_the_cause():
    echo = pod(1, "Failed", exit_code=1, exit_message="... watchdog ...", finished_at=NOW)
    early = plan_reconcile(state(running_status()), Observed([job()], [pod(0), echo]), NOW)
    assert "lastFailure" not in early.status  # not decided yet
    said = parse_summary(summary(failureClass="Hang"))
    hung = pod(0, "Failed", exit_code=1, summary=said, finished_at=NOW + timedelta(seconds=1))
    later = NOW + timedelta(seconds=2)
    plan = plan_reconcile(state(running_status()), Observed([job()], [hung, echo]), later)
    assert status_of(plan)["lastFailure"]["reason"] == "Hang"


def test_a_worker_the_job_controller_removed_does_not_hide_the_real_cause():
    status = running_status(attemptRunningTime=format_time(NOW - timedelta(minutes=1)))
    crashed = failed(1, exit_code=1, exit_message="Traceback: boom")  # worker 0 is gone
    plan = plan_reconcile(state(status), Observed([job(failure_target=True)], [crashed]), NOW)
    assert status_of(plan)["lastFailure"]["reason"] == "WorkerFailed"
    assert status_of(plan)["restarts"] == 1


def test_before_its_first_step_the_trainer_watchdog_decides_first():
    """No step reported yet (the first report is a log interval away): the backstop waits 3x the
    timeout instead of 1.25x, so a hang the watchdog is dumping is reported as its Hang."""
    observed = Observed([job()], [pod(0), pod(1)])
    spec_fields = {"failurePolicy": {"hangTimeoutSeconds": 100, "maxRestarts": 1}}
    waiting = plan_reconcile(state(hang_status(200, step=None), **spec_fields), observed, NOW)
    assert "lastFailure" not in waiting.status
    assert waiting.requeue_after_s == pytest.approx(100)
    hung = plan_reconcile(state(hang_status(301, step=None), **spec_fields), observed, NOW)
    assert "no step reported for 301s" in status_of(hung)["lastFailure"]["message"]


def test_a_new_attempt_starting_up_is_never_a_hang():
    observed = Observed([job()], [pod(0), pod(1)])
    spec_fields = {"failurePolicy": {"hangTimeoutSeconds": 100, "maxRestarts": 1}}
    hung = plan_reconcile(state(hang_status(200), **spec_fields), observed, NOW)
    assert hung.status.attempt == 2
    gone = Observed([job(deleting=True)], [])
    created = plan_reconcile(
        JobState(
            "sd",
            "ns",
            1,
            hung.spec or state().spec,
            hung.status.model_copy(update={"restart_after": None}),
        ),
        gone,
        NOW,
    )
    assert created.create_attempt == 2
    assert created.status.progress is not None and created.status.progress.activity is None
    later = NOW + timedelta(seconds=300)  # the new gang runs, its rank 0 not reporting yet
    new_pods = Observed([job(attempt=2)], [pod(0, attempt=2), pod(1, attempt=2)])
    ran = plan_reconcile(
        JobState("sd", "ns", 1, state(**spec_fields).spec, created.status), new_pods, later
    )
    again = plan_reconcile(
        JobState("sd", "ns", 1, state(**spec_fields).spec, ran.status),
        new_pods,
        later + timedelta(seconds=200),
    )
    assert again.status.phase == "Running"
