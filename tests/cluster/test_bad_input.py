"""Bad input never stops the operator: malformed progress readings, a slow progress endpoint,
a create refused by a quota, a spec edited while a queue holds the job."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client

from testenv.waiting import wait_until

pytestmark = pytest.mark.cluster
PROGRESS_HOST, PROGRESS_PORT = "127.0.0.7", 9400  # the kwok pod-ip stage points rank 0 here


class ProgressEndpoint:
    """Rank 0's /progress, answering whatever the test sets: raw bytes, after a delay."""

    def __init__(self) -> None:
        self.body = b"{}"
        self.delay_s = 0.0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                time.sleep(endpoint.delay_s)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(endpoint.body)

            def log_message(self, *_: object) -> None:
                return

        self.server = ThreadingHTTPServer((PROGRESS_HOST, PROGRESS_PORT), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def serve(self, payload: object = None, raw: bytes | None = None, delay_s: float = 0) -> None:
        self.body = raw if raw is not None else json.dumps(payload).encode()
        self.delay_s = delay_s

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    served = ProgressEndpoint()
    yield served
    served.close()


def progress_of(dtjs, name: str) -> dict:
    return dtjs.status(name).get("progress") or {}


def wait_progress(dtjs, name: str, what: str, check) -> dict:
    return wait_until(lambda: (p := progress_of(dtjs, name)) and check(p) and p, 30, what)


def test_bad_progress_payloads_leave_the_job_reconciled(
    dtjs, make_gpu_pool, operator, job_spec, endpoint
):
    pool = make_gpu_pool(num_nodes=1)
    annotations = {"testenv.diffusion.dev/pod-ip": PROGRESS_HOST}
    dtjs.create("noisy", job_spec(pool, nodes=1, podAnnotations=annotations))
    dtjs.running_pods("noisy", attempt=1, count=1)
    endpoint.serve({"step": 5, "totalSteps": 100, "loss": 0.5, "activity": "training"})
    wait_progress(dtjs, "noisy", "a good reading", lambda p: p.get("step") == 5)

    # Wrong types, numbers beyond int64, NaN: each bad field is dropped, the good ones kept.
    endpoint.serve(
        raw=b'{"step": "ten", "totalSteps": 1e400, "loss": NaN, "imagesPerSecond": 12.5,'
        b' "etaSeconds": [1], "activity": "dancing", "checkpoint": {"step": -1, "uri": 3}}'
    )
    progress = wait_progress(
        dtjs, "noisy", "the valid field", lambda p: p.get("imagesPerSecond") == 12.5
    )
    assert progress["step"] == 5  # the last good step stays
    assert progress["totalSteps"] == 100
    assert "checkpoint" not in dtjs.status("noisy")

    endpoint.serve({"step": 10**30, "totalSteps": 100})  # beyond what the CRD's int64 holds
    endpoint.serve({"step": 7, "totalSteps": 100})
    wait_progress(dtjs, "noisy", "reconciled after bad readings", lambda p: p.get("step") == 7)

    endpoint.serve(raw=b"<html>not json</html>")
    wait_progress(dtjs, "noisy", "stale on a non-JSON answer", lambda p: p.get("stale"))

    # A slow endpoint (beyond the read timeout) neither blocks passes nor the other jobs.
    endpoint.serve({"step": 8}, delay_s=5)
    dtjs.patch_spec("noisy", {"runPolicy": {"suspend": True}})
    dtjs.wait_phase("noisy", "Suspended", timeout_s=30)


def test_a_create_refused_by_a_quota_shows_the_server_message(
    dtjs, make_gpu_pool, operator, job_spec, core_api
):
    quota = {"metadata": {"name": "no-jobs"}, "spec": {"hard": {"count/jobs.batch": "0"}}}
    core_api.create_namespaced_resource_quota(dtjs.namespace, quota)
    pool = make_gpu_pool(num_nodes=1)
    dtjs.create("refused", job_spec(pool, nodes=1))

    refused = wait_until(
        lambda: (c := dtjs.condition("refused", "CreateRefused")) and c["status"] == "True" and c,
        60,
        "the CreateRefused condition",
    )
    assert "exceeded quota: no-jobs" in refused["message"]  # the API server's own words
    assert "Job refused-a1" in refused["message"]
    events = dtjs.core.list_namespaced_event(
        dtjs.namespace, field_selector="involvedObject.name=refused"
    ).items
    assert any(e.reason == "CreateRefused" and "exceeded quota" in e.message for e in events)

    core_api.delete_namespaced_resource_quota("no-jobs", dtjs.namespace)
    dtjs.running_pods("refused", attempt=1, count=1, timeout_s=60)  # retried after the quota
    wait_until(
        lambda: dtjs.condition("refused", "CreateRefused").get("status") == "False",
        30,
        "the refusal to clear",
    )


def test_a_spec_edit_while_queued_replaces_the_suspended_job(
    dtjs, make_gpu_pool, operator, job_spec
):
    pool = make_gpu_pool(num_nodes=1)
    dtjs.create("queued", job_spec(pool, nodes=1, runPolicy={"queueName": "team-a"}))
    dtjs.wait_phase("queued", "Suspended")
    dtjs.patch_spec("queued", {"env": [{"name": "DTJ_EXTRA", "value": "newer"}]})

    def replaced() -> list[client.V1Job] | None:
        jobs = [j for j in dtjs.jobs("queued") if not j.metadata.deletion_timestamp]
        return jobs if [j.metadata.name for j in jobs] == ["queued-a2"] else None

    (job,) = wait_until(replaced, 30, "attempt 2 replacing the queued attempt 1")
    assert job.spec.suspend is True  # still waiting for the queue to admit it
    env = {e.name: e.value for e in job.spec.template.spec.containers[0].env}
    assert env["DTJ_EXTRA"] == "newer"
    assert dtjs.status("queued")["restarts"] == 0
