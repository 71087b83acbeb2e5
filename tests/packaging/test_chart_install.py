"""The chart on the real control plane: install, least-privilege RBAC that is still enough to run
a job end to end, and Pod Security "restricted" for the operator and the worker pods it builds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from testenv.ports import free_port
from testenv.waiting import wait_until

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "diffusion.dev", "v1alpha1", "diffusiontrainingjobs"
DTJ = f"{PLURAL}.{GROUP}"
OUTCOME = "testenv.diffusion.dev/outcome"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}
# Pods of these tests must never land on another test's fake nodes.
NO_NODE = {"testenv.diffusion.dev/pool": "no-such-pool"}
# A refused API call, as kopf and the kubernetes client log it ("(403)", "Forbidden"); not any
# "403" (a timestamp's milliseconds can be 403).
FORBIDDEN = re.compile(r"forbidden|\(403\)|\b(?:code|status)[=: ]+403\b", re.IGNORECASE)


def job_spec(node_selector: dict[str, str], tolerations: list[dict], **overrides: Any) -> dict:
    """A valid two-node GPU job (tiny-cpu preset), as an ML engineer would apply it."""
    spec: dict[str, Any] = {
        "image": "ghcr.io/diffusion-operator/trainer:test",
        "preset": "tiny-cpu",
        "training": {"globalBatchSize": 16 * 2 * 8, "microBatchSize": 16},
        "resources": {
            "nodes": 2,
            "gpusPerNode": 8,
            "nodeSelector": node_selector,
            "tolerations": tolerations,
        },
        "failurePolicy": {"maxRestarts": 0, "backoffSeconds": 1},
    }
    return {**spec, **overrides}


def create_training_job(ns, name: str, spec: dict) -> dict:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DiffusionTrainingJob",
        "metadata": {"name": name},
        "spec": spec,
    }
    return ns.custom.create_namespaced_custom_object(GROUP, VERSION, ns.name, PLURAL, body)


def training_job_phase(ns, name: str) -> str | None:
    job = ns.custom.get_namespaced_custom_object(GROUP, VERSION, ns.name, PLURAL, name)
    return (job.get("status") or {}).get("phase")


def restrict(ns) -> None:
    ns.core.patch_namespace(ns.name, {"metadata": {"labels": RESTRICTED}})


def event_messages(ns, reason: str) -> list[str]:
    events = ns.core.list_namespaced_event(ns.name, field_selector=f"reason={reason}").items
    return [e.message or "" for e in events]


def pods_matching(ns, selector: str, count: int, phase: str | None = None) -> list:
    def found():
        pods = ns.core.list_namespaced_pod(ns.name, label_selector=selector).items
        pods = [p for p in pods if phase is None or p.status.phase == phase]
        return pods if len(pods) >= count else None

    return wait_until(found, 90, f"{count} {phase or ''} pods matching {selector}")


def responds_ok(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status == 200
    except OSError:  # not listening yet, or 503
        return False


def operator_settings(release, kubeconfig: str, liveness_port: int) -> dict[str, str]:
    """The operator's environment as the chart sets it: the release's namespace and Lease."""
    return {
        "KUBECONFIG": kubeconfig,
        "DTJ_OPERATOR_NAMESPACES": release.namespace,
        "DTJ_OPERATOR_PROGRESS_INTERVAL_S": "1",
        "DTJ_OPERATOR_LEADER_ELECTION": "true",
        "DTJ_OPERATOR_LEASE_NAME": release.fullname,
        "DTJ_OPERATOR_LEASE_NAMESPACE": release.namespace,
        "DTJ_OPERATOR_LIVENESS_PORT": str(liveness_port),
        "DTJ_OPERATOR_LOG_FORMAT": "text",
    }


@contextmanager
def operator_process(kubeconfig: Path, release, log_path: Path) -> Iterator[None]:
    """`dtj operator` as its own process, with nothing but the given kubeconfig, leader election
    on the release's Lease as the chart sets it (DTJ_OPERATOR_LEASE_*)."""
    port = free_port()
    env = {**os.environ, **operator_settings(release, str(kubeconfig), port)}
    env.pop("KUBERNETES_SERVICE_HOST", None)  # no in-cluster credentials either
    dtj = Path(sys.executable).parent / "dtj"
    with log_path.open("w") as log:
        process = subprocess.Popen([dtj, "operator"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: responds_ok(port, "/healthz"), 60, "the operator's /healthz")
            # Ready needs the Lease read or written: the leader-election Role is enough.
            wait_until(lambda: responds_ok(port, "/readyz"), 60, "the operator's /readyz")
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_helm_install_in_a_restricted_namespace(install_chart, test_namespace):
    ns = test_namespace
    restrict(ns)
    release = install_chart()
    assert f"kubectl apply -n {ns.name} -f manifests/examples/tiny-cpu.yaml" in (
        release.install_output
    )
    assert f"kubectl get dtj -n {ns.name}" in release.install_output
    pods = pods_matching(ns, f"app.kubernetes.io/instance={release.name}", 2)
    assert len(pods) == 2  # replicaCount: a leader and a standby
    assert {pod.spec.service_account_name for pod in pods} == {release.service_account}
    assert not event_messages(ns, "FailedCreate")


def test_operator_runs_a_job_with_only_the_chart_service_account(
    install_chart, token_kubeconfig, test_namespace, make_gpu_pool, tmp_path
):
    restrict(test_namespace)  # the real operator's pods must pass "restricted" too
    release = install_chart()
    pool = make_gpu_pool(num_nodes=2)
    spec = job_spec(
        pool.node_selector, pool.tolerations, serviceAccountName=release.worker_service_account
    )
    log_path = tmp_path / "operator.log"
    with operator_process(token_kubeconfig(release), release, log_path):
        lease = lease_of(test_namespace, release)
        assert lease.spec.holder_identity  # it leads, on the chart's Role
        run_job_to_success(test_namespace, spec, release)
    log = log_path.read_text()
    denied = [line[:300] for line in log.splitlines() if FORBIDDEN.search(line)]
    assert not denied, "the operator was refused:\n" + "\n".join(denied[:4])
    events = test_namespace.core.list_namespaced_event(test_namespace.name).items
    # Posted by the operator: proves "create events" is granted and used.
    assert {"Created", "AllWorkersSucceeded"} <= {e.reason for e in events}


def lease_of(ns, release):
    from kubernetes import client

    coordination = client.CoordinationV1Api(ns.core.api_client)
    return coordination.read_namespaced_lease(release.fullname, ns.name)


def run_job_to_success(ns, spec: dict, release) -> None:
    """Apply, run on the fake pool, succeed, delete: the basic lifecycle."""
    create_training_job(ns, "rbac", spec)
    selector = "diffusion.dev/job-name=rbac"
    for pod in pods_matching(ns, selector, 2, phase="Running"):
        assert pod.spec.service_account_name == release.worker_service_account
        assert pod.spec.automount_service_account_token is False
        assert not [v for v in pod.spec.volumes or [] if v.projected]  # no token volume
        annotations = {"metadata": {"annotations": {OUTCOME: "Succeeded"}}}
        ns.core.patch_namespaced_pod(pod.metadata.name, ns.name, annotations)
    wait_until(lambda: training_job_phase(ns, "rbac") == "Succeeded", 60, "dtj/rbac Succeeded")
    ns.custom.delete_namespaced_custom_object(GROUP, VERSION, ns.name, PLURAL, "rbac")
    wait_until(
        lambda: not ns.batch.list_namespaced_job(ns.name, label_selector=selector).items,
        60,
        "the job's attempts garbage-collected",
    )


OPERATOR_NEEDS = [
    ("list", DTJ),
    ("watch", DTJ),
    ("delete", DTJ),
    ("patch", DTJ, "--subresource=status"),
    ("list", "jobs.batch"),
    ("watch", "jobs.batch"),
    ("create", "jobs.batch"),
    ("patch", "jobs.batch"),
    ("delete", "jobs.batch"),
    ("list", "pods"),
    ("watch", "pods"),
    ("delete", "pods"),
    ("list", "configmaps"),
    ("watch", "configmaps"),
    ("create", "configmaps"),
    ("patch", "configmaps"),
    ("list", "services"),
    ("watch", "services"),
    ("create", "services"),
    ("create", "events"),
]
NEVER_ALLOWED = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("watch", "secrets"),
    ("create", "secrets"),
    ("create", "pods"),
    ("create", "pods/exec"),
    ("get", "configmaps"),
    ("patch", DTJ),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("*", "*"),
]
LEASES = "leases.coordination.k8s.io"


def lease_needs(release) -> list[tuple[str, str]]:
    """Leader election on the release's Lease: create it once, then read and renew it."""
    own = f"{LEASES}/{release.fullname}"
    return [("create", LEASES), ("get", own), ("update", own)]


LEASE_NEVER = [
    ("list", LEASES),
    ("watch", LEASES),
    ("delete", LEASES),
    ("patch", LEASES),
    ("get", f"{LEASES}/another-operator"),
    ("update", f"{LEASES}/another-operator"),
]
CLUSTER_WIDE_NEVER = [
    ("list", "namespaces"),
    ("patch", "nodes"),
    ("delete", "nodes"),
    ("list", "secrets"),
]


def test_namespaced_operator_cannot_read_secrets_or_leave_its_namespace(install_chart, can_i):
    release = install_chart()
    me, own = release.identity, ("-n", release.namespace)
    assert [need for need in OPERATOR_NEEDS if not can_i(me, *need, *own)] == []
    assert [need for need in lease_needs(release) if not can_i(me, *need, *own)] == []
    assert [verb for verb in NEVER_ALLOWED + LEASE_NEVER if can_i(me, *verb, *own)] == []
    for other in ("default", "kube-system"):
        assert [need for need in OPERATOR_NEEDS if can_i(me, *need, "-n", other)] == []
        assert [need for need in lease_needs(release) if can_i(me, *need, "-n", other)] == []
    assert not can_i(me, "list", DTJ, "--all-namespaces")
    assert not can_i(me, "list", "customresourcedefinitions.apiextensions.k8s.io")
    assert [verb for verb in CLUSTER_WIDE_NEVER if can_i(me, *verb, "--all-namespaces")] == []
    assert can_i(me, "watch", "nodes")  # a worker's node: NotReady, unreachable or deleted?


def test_cluster_scope_operator_serves_every_namespace_but_reads_no_secrets(install_chart, can_i):
    release = install_chart({"rbac.scope": "cluster"})
    me = release.identity
    assert can_i(me, "list", DTJ, "--all-namespaces")
    assert can_i(me, "watch", DTJ, "--all-namespaces")
    own = ("-n", release.namespace)
    assert [need for need in lease_needs(release) if not can_i(me, *need, *own)] == []
    assert [verb for verb in LEASE_NEVER if can_i(me, *verb, *own)] == []
    for other in ("default", "kube-system"):
        assert [need for need in OPERATOR_NEEDS if not can_i(me, *need, "-n", other)] == []
        assert [verb for verb in NEVER_ALLOWED if can_i(me, *verb, "-n", other)] == []
        # The Lease lives in the release namespace only.
        assert [need for need in lease_needs(release) if can_i(me, *need, "-n", other)] == []
    assert [verb for verb in CLUSTER_WIDE_NEVER if can_i(me, *verb, "--all-namespaces")] == []


@pytest.mark.parametrize(
    ("pod_security", "admitted"),
    [({}, True), ({"addCapabilities": ["IPC_LOCK"]}, False)],
    ids=["default", "ipc-lock-opt-in"],
)
def test_restricted_namespace_and_worker_pods(test_namespace, crd, pod_security, admitted):
    from diffusion_operator.builders import Owner
    from diffusion_operator.spec import DiffusionTrainingJobSpec
    from diffusion_operator.worker_job import AttemptInputs, build_worker_job

    ns = test_namespace
    restrict(ns)
    raw_spec = job_spec(NO_NODE, [], podSecurity=pod_security)
    owner_uid = create_training_job(ns, "psa", raw_spec)["metadata"]["uid"]
    spec = DiffusionTrainingJobSpec.model_validate(raw_spec)
    job = build_worker_job(Owner("psa", ns.name, owner_uid), spec, AttemptInputs(attempt=1))
    ns.batch.create_namespaced_job(ns.name, job)
    if admitted:
        pods_matching(ns, "diffusion.dev/job-name=psa", 2)
        assert not event_messages(ns, "FailedCreate")
        return
    violations = wait_until(
        lambda: [m for m in event_messages(ns, "FailedCreate") if "PodSecurity" in m],
        60,
        "a FailedCreate event for a PodSecurity violation",
    )
    assert "restricted" in violations[0]
