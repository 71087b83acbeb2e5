"""Two operator replicas against one control plane: only the Lease holder acts, a standby
takes over when the leader dies, and no job gets a second attempt from the hand-over. And a
replica whose API connection hangs fails its liveness probe."""

from __future__ import annotations

from urllib.parse import urlparse

import pytest
import yaml
from kubernetes import client
from operator_process import FreezableProxy, kubeconfig_via, start_operator

from testenv.chaos_checks import finish
from testenv.waiting import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
LEASE = "diffusion-operator"
FAST_LEASE = {"lease_duration_s": "6"}


@pytest.fixture
def replicas(control_plane, crd, namespace, tmp_path):
    started = []

    def start(name: str, kubeconfig=None, **settings: str):
        replica = start_operator(
            name, kubeconfig or control_plane.kubeconfig, namespace, tmp_path, **settings
        )
        started.append(replica)
        return replica

    yield start
    for replica in started:
        replica.stop()


def lease_holder(api_client, namespace: str) -> str | None:
    try:
        lease = client.CoordinationV1Api(api_client).read_namespaced_lease(LEASE, namespace)
    except client.exceptions.ApiException:
        return None
    return lease.spec.holder_identity


def leader_of(api_client, namespace: str, replicas) -> object:
    def find():
        holder = lease_holder(api_client, namespace) or ""
        return next((r for r in replicas if holder.startswith(f"{r.name}_")), None)

    return wait_until(find, 60, "a replica to hold the lease")


def attempt_jobs(dtjs, name: str) -> list[str]:
    return sorted(j.metadata.name for j in dtjs.jobs(name))


def test_only_the_leader_acts_and_a_standby_takes_over(
    api_client, dtjs, make_gpu_pool, job_spec, replicas, namespace
):
    pool = make_gpu_pool(num_nodes=2)
    first, second = replicas("a", **FAST_LEASE), replicas("b", **FAST_LEASE)
    leader = leader_of(api_client, namespace, [first, second])
    standby = second if leader is first else first
    for replica in (first, second):
        wait_until(lambda r=replica: r.probe("/readyz")[0] == 200, 60, f"{replica.name} ready")
    assert leader.probe("/healthz")[1]["leader"] is True
    assert standby.probe("/healthz")[1]["leader"] is False

    dtjs.create("ha", job_spec(pool, failurePolicy={"maxRestarts": 2, "backoffSeconds": 1}))
    dtjs.running_pods("ha", attempt=1, count=2)
    dtjs.wait_phase("ha", "Running")
    assert f"{namespace}/ha Created" in leader.log()
    assert f"{namespace}/ha" not in standby.log()  # the standby never ran a pass

    leader.kill()  # no release: the standby waits for the lease to expire
    assert leader_of(api_client, namespace, [standby]) is standby
    wait_until(lambda: standby.probe("/healthz")[1].get("leader"), 30, "the standby to lead")
    # The new leader sees the running attempt as it is: no second attempt, no restart.
    assert attempt_jobs(dtjs, "ha") == ["ha-a1"]
    finish(dtjs, dtjs.running_pods("ha", attempt=1, count=2)[:1], outcome="Failed")
    wait_until(lambda: "ha-a2" in attempt_jobs(dtjs, "ha"), 60, "attempt 2 after a failure")
    status = dtjs.status("ha")
    assert status["attempt"] == 2
    assert status["restarts"] == 1  # one failure, one restart: the hand-over added none
    assert f"{namespace}/ha" in standby.log()


def test_a_leader_that_shuts_down_hands_over_at_once(api_client, replicas, namespace, crd):
    first, second = replicas("a"), replicas("b")  # the default 15 s lease
    leader = leader_of(api_client, namespace, [first, second])
    standby = second if leader is first else first
    leader.stop()  # SIGTERM: the lease is released
    new_leader = wait_until(
        lambda: (lease_holder(api_client, namespace) or "").startswith(f"{standby.name}_"),
        10,  # well under the 15 s lease: released, not expired
        "the standby to take the released lease",
    )
    assert new_leader


def test_a_hung_api_connection_fails_liveness(control_plane, replicas, namespace, tmp_path):
    server = yaml.safe_load(control_plane.kubeconfig.read_text())["clusters"][0]["cluster"]
    target = urlparse(server["server"])
    proxy = FreezableProxy(target.hostname or "127.0.0.1", target.port or 443)
    try:
        kubeconfig = kubeconfig_via(control_plane.kubeconfig, proxy.port, tmp_path / "proxied")
        replica = replicas("a", kubeconfig=kubeconfig, stall_timeout_s="8")
        wait_until(lambda: replica.probe("/readyz")[0] == 200, 60, "the replica to be ready")
        assert replica.probe("/healthz")[0] == 200
        proxy.freeze()  # connections stay open; nothing comes back
        wait_until(lambda: replica.probe("/healthz")[0] == 503, 60, "liveness to fail")
        assert replica.process.poll() is None  # the process lives on: the kubelet restarts it
    finally:
        proxy.close()
