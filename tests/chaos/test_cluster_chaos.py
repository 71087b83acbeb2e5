"""Chaos on the real control plane with fake A100 pools: workers, nodes and the operator fail,
and every case checks phase, counted restarts vs disruptions, attempt, reason (status and
Events), that no older attempt is left behind, and that the committed checkpoint never goes back.
"""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from testenv.chaos_checks import (
    CheckpointWatch,
    annotations,
    assert_recovered,
    event_reasons,
    finish,
    trainer_summary,
)
from testenv.gpu_pool import set_node_ready
from testenv.waiting import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]


def policy(**fields) -> dict:
    return {"maxRestarts": 1, "backoffSeconds": 1, **fields}


def test_a_worker_that_fails_every_attempt_spends_the_budget(
    dtjs, make_gpu_pool, operator, job_spec
):
    pool = make_gpu_pool(num_nodes=2)
    dtjs.create("crash", job_spec(pool, failurePolicy=policy(maxRestarts=2)))
    for attempt in (1, 2, 3):
        pods = dtjs.running_pods("crash", attempt=attempt, count=2)
        finish(dtjs, pods[1:], outcome="Failed", exit_code="1", message="Traceback: boom")
    status = assert_recovered(
        dtjs, "crash", phase="Failed", attempt=3, restarts=2, reason="WorkerFailed"
    )
    message = dtjs.condition("crash", "Failed")["message"]
    assert "attempt 3: worker 1" in message and "boom" in message
    assert "no restarts left (failurePolicy.maxRestarts: 2)" in message
    assert status["lastFailure"]["class"] == "Error"


def test_a_config_error_fails_at_once_with_the_trainer_message(
    dtjs, make_gpu_pool, operator, job_spec
):
    pool = make_gpu_pool(num_nodes=2)
    dtjs.create("badcfg", job_spec(pool, failurePolicy=policy(maxRestarts=5)))
    pods = dtjs.running_pods("badcfg", attempt=1, count=2)
    said = trainer_summary(
        failureClass="ConfigError",
        exitCode=2,
        message="data.train.local='/data/x' holds no MDS dataset",
    )
    finish(dtjs, pods[:1], outcome="Failed", exit_code="1", message=said)
    assert_recovered(dtjs, "badcfg", phase="Failed", attempt=1, restarts=0, reason="ConfigError")
    assert "holds no MDS dataset" in dtjs.condition("badcfg", "Failed")["message"]
    # Never retried; the failed attempt's Job and failed pod stay for their logs.
    assert [j.metadata.name for j in dtjs.jobs("badcfg")] == ["badcfg-a1"]
    failed_pods = [p for p in dtjs.pods("badcfg") if p.status.phase == "Failed"]
    assert [p.metadata.name for p in failed_pods] == [pods[0].metadata.name]


def test_oom_killed_fails_and_names_the_knobs(dtjs, make_gpu_pool, operator, job_spec):
    pool = make_gpu_pool(num_nodes=2)
    dtjs.create("oomk", job_spec(pool, failurePolicy=policy(maxRestarts=3)))
    pods = dtjs.running_pods("oomk", attempt=1, count=2)
    finish(dtjs, pods[:1], outcome="Failed", exit_code="137", reason="OOMKilled")
    assert_recovered(dtjs, "oomk", phase="Failed", attempt=1, restarts=0, reason="OOMKilled")
    assert "microBatchSize" in dtjs.condition("oomk", "Failed")["message"]


def test_oom_killed_restarts_when_a_rule_says_so(dtjs, make_gpu_pool, operator, job_spec):
    pool = make_gpu_pool(num_nodes=2)
    rules = [{"onClasses": ["OOMKilled"], "action": "Restart"}]
    dtjs.create("oomr", job_spec(pool, failurePolicy=policy(maxRestarts=3, rules=rules)))
    pods = dtjs.running_pods("oomr", attempt=1, count=2)
    finish(dtjs, pods[:1], outcome="Failed", exit_code="137", reason="OOMKilled")
    pods = dtjs.running_pods("oomr", attempt=2, count=2)
    finish(dtjs, pods, outcome="Succeeded")
    assert_recovered(dtjs, "oomr", phase="Succeeded", attempt=2, restarts=1, reason="OOMKilled")


def test_three_preemptions_spend_no_restarts(
    dtjs, make_gpu_pool, operator, job_spec, operator_metrics
):
    pool = make_gpu_pool(num_nodes=2)
    dtjs.create("preempt", job_spec(pool, failurePolicy=policy(maxRestarts=1)))
    with CheckpointWatch(dtjs, "preempt"):
        for attempt, step in ((1, 100), (2, 200), (3, 300)):
            pods = dtjs.running_pods("preempt", attempt=attempt, count=2)
            uri = f"/checkpoints/x/preempt/step-{step:08d}"
            said = trainer_summary(
                status="preempted",
                exitCode=143,
                step=step,
                lastCheckpoint=uri,
                lastCheckpointStep=step,
            )
            # Rank 0 saves on SIGTERM and says so; the other worker just stops.
            dtjs.annotate_pod(
                pods[0].metadata.name, annotations(disruption="PreemptionByScheduler", message=said)
            )
            dtjs.annotate_pod(
                pods[1].metadata.name, annotations(disruption="PreemptionByScheduler")
            )
            wait_until(
                lambda a=attempt: [
                    j for j in dtjs.jobs("preempt") if j.metadata.name == f"preempt-a{a + 1}"
                ],
                60,
                f"attempt {attempt + 1}",
            )
            (job,) = [
                j for j in dtjs.jobs("preempt") if j.metadata.name == f"preempt-a{attempt + 1}"
            ]
            env = {e.name: e.value for e in job.spec.template.spec.containers[0].env}
            assert env["RESUME_FROM"] == uri  # never older than the newest committed one
        pods = dtjs.running_pods("preempt", attempt=4, count=2)
        # The recovery ends when the operator sees the new gang running, not when we do.
        wait_until(
            lambda: dtjs.status("preempt").get("attemptRunningTime"), 30, "attempt 4 running"
        )
        finish(dtjs, pods, outcome="Succeeded")
        status = assert_recovered(
            dtjs,
            "preempt",
            phase="Succeeded",
            attempt=4,
            restarts=0,
            disruptions=3,
            reason="PreemptionByScheduler",
        )
    assert status["checkpoint"]["step"] == 300
    assert [i["class"] for i in status["incidents"]] == ["Disruption"] * 3
    assert all(i.get("recoverSeconds") is not None for i in status["incidents"])
    samples = operator_metrics()
    key = (
        "dtj_operator_restarts_total",
        (
            ("action", "RestartNotCounted"),
            ("class", "Disruption"),
            ("dtj_job", "preempt"),
            ("dtj_namespace", dtjs.namespace),
            ("reason", "PreemptionByScheduler"),
        ),
    )
    assert samples[key] == 3


def test_a_not_ready_node_with_stuck_pods_restarts_the_gang_elsewhere(
    dtjs, make_gpu_pool, operator, job_spec, core_api
):
    pool = make_gpu_pool(num_nodes=3)
    timeouts = {"nodeNotReadyTimeoutSeconds": 5, "podTerminationTimeoutSeconds": 3}
    spec = job_spec(pool, failurePolicy=policy(**timeouts))
    spec["runPolicy"] = {"terminationGracePeriodSeconds": 5}
    dtjs.create("lost", spec)
    pods = dtjs.running_pods("lost", attempt=1, count=2)
    dead = pods[0].spec.node_name
    # Its kubelet is gone: deleting the pod leaves it Terminating until force-deleted.
    dtjs.annotate_pod(pods[0].metadata.name, annotations(unreachable="true"))
    set_node_ready(core_api, dead, ready=False, reason="NodeStatusUnknown")
    started = time.monotonic()
    new_pods = dtjs.running_pods("lost", attempt=2, count=2, timeout_s=90)
    recovered_s = time.monotonic() - started
    assert dead not in {p.spec.node_name for p in new_pods}
    status = dtjs.status("lost")
    assert [n["name"] for n in status["avoidedNodes"]] == [dead]
    assert "ForceDeletedWorker" in event_reasons(dtjs, "lost")
    finish(dtjs, new_pods, outcome="Succeeded")
    assert_recovered(
        dtjs, "lost", phase="Succeeded", attempt=2, restarts=0, disruptions=1, reason="NodeNotReady"
    )
    # Bound: node timeout + grace + termination timeout + passes; far below the 300 s taint
    # eviction that would otherwise act first.
    assert recovered_s < 60


def test_a_deleted_node_ends_the_attempt_as_a_disruption(
    dtjs, make_gpu_pool, operator, job_spec, core_api
):
    pool = make_gpu_pool(num_nodes=3)
    dtjs.create("gone", job_spec(pool, failurePolicy=policy(maxRestarts=0)))
    pods = dtjs.running_pods("gone", attempt=1, count=2)
    core_api.delete_node(pods[1].spec.node_name)
    # The pod garbage collector removes pods of a deleted node (after its quarantine).
    new_pods = dtjs.running_pods("gone", attempt=2, count=2, timeout_s=150)
    finish(dtjs, new_pods, outcome="Succeeded")
    status = assert_recovered(dtjs, "gone", phase="Succeeded", attempt=2, restarts=0, disruptions=1)
    assert status["lastFailure"]["class"] == "Disruption"
    assert status["lastFailure"]["reason"] in ("WorkerLost", "DeletionByPodGC", "NodeLost")


def test_an_operator_killed_mid_restart_makes_exactly_one_new_attempt(
    dtjs, make_gpu_pool, run_operator, job_spec
):
    pool = make_gpu_pool(num_nodes=2)
    first = run_operator()
    dtjs.create("crashop", job_spec(pool, failurePolicy=policy(backoffSeconds=3)))
    pods = dtjs.running_pods("crashop", attempt=1, count=2)
    finish(dtjs, pods[1:], outcome="Failed", exit_code="1")
    dtjs.wait_phase("crashop", "Restarting")
    first.__exit__(None, None, None)  # dies while the restart is under way (in its backoff)
    time.sleep(4)
    run_operator()
    new_pods = dtjs.running_pods("crashop", attempt=2, count=2, timeout_s=60)
    time.sleep(2)  # a duplicate attempt would show up by now
    # One new attempt; attempt 1's Job stays for its failed worker's log.
    assert sorted(j.metadata.name for j in dtjs.jobs("crashop")) == ["crashop-a1", "crashop-a2"]
    finish(dtjs, new_pods, outcome="Succeeded")
    assert_recovered(
        dtjs, "crashop", phase="Succeeded", attempt=2, restarts=1, reason="WorkerFailed"
    )


def test_conflicting_status_writes_do_not_lose_a_restart(dtjs, make_gpu_pool, operator, job_spec):
    pool = make_gpu_pool(num_nodes=2)
    dtjs.create("racy", job_spec(pool, failurePolicy=policy()))
    pods = dtjs.running_pods("racy", attempt=1, count=2)
    stop = threading.Event()

    def other_writer() -> None:  # e.g. a second controller annotating progress
        while not stop.is_set():
            with contextlib.suppress(Exception):  # conflicts and throttling are the chaos
                dtjs.patch_status("racy", {"progress": {"loss": 0.5, "step": 1}})
            time.sleep(0.05)

    writer = threading.Thread(target=other_writer, daemon=True)
    writer.start()
    try:
        finish(dtjs, pods[1:], outcome="Failed", exit_code="1")
        new_pods = dtjs.running_pods("racy", attempt=2, count=2, timeout_s=60)
    finally:
        stop.set()
        writer.join(timeout=5)
    finish(dtjs, new_pods, outcome="Succeeded")
    assert_recovered(dtjs, "racy", phase="Succeeded", attempt=2, restarts=1, reason="WorkerFailed")
    assert sorted(j.metadata.name for j in dtjs.jobs("racy")) == ["racy-a1", "racy-a2"]


@pytest.fixture
def frozen_trainer():
    """A progress endpoint whose step never moves while it says it trains: a hung gang as the
    operator sees it. Served on a loopback address the kwok pod-ip stage gives rank 0."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    reading = {"step": 5, "totalSteps": 100, "activity": "training", "loss": 0.5}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(reading).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    address = "127.0.0.77"
    server = ThreadingHTTPServer((address, 9400), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield address
    server.shutdown()
    server.server_close()


def test_a_step_that_stops_advancing_restarts_the_gang_as_a_hang(
    dtjs, make_gpu_pool, operator, job_spec, frozen_trainer
):
    pool = make_gpu_pool(num_nodes=2)
    spec = job_spec(pool, failurePolicy=policy(hangTimeoutSeconds=10))
    spec["podAnnotations"] = annotations(pod_ip=frozen_trainer)
    dtjs.create("hung", spec)
    dtjs.running_pods("hung", attempt=1, count=2)
    wait_until(
        lambda: (dtjs.status("hung").get("progress") or {}).get("activity") == "training",
        30,
        "a progress reading",
    )
    new_pods = dtjs.running_pods("hung", attempt=2, count=2, timeout_s=60)
    failure = dtjs.status("hung")["lastFailure"]
    assert (failure["reason"], failure["class"]) == ("StepStalled", "Hang")
    assert "step 5 has not advanced" in failure["message"]
    job = next(j for j in dtjs.jobs("hung") if j.metadata.name == "hung-a2")
    env = {e.name: e.value for e in job.spec.template.spec.containers[0].env}
    assert (env["DTJ_HANG_TIMEOUT_S"], env["DTJ_COLLECTIVE_TIMEOUT_S"]) == ("10", "20")
    finish(dtjs, new_pods, outcome="Succeeded")
    assert_recovered(dtjs, "hung", phase="Succeeded", attempt=2, restarts=1, reason="StepStalled")
