"""The local control plane behaves like a real cluster with a fake A100 pool."""

from __future__ import annotations

import pytest

from testenv.gpu_pool import node_ready_status, set_node_ready
from testenv.waiting import wait_until

pytestmark = pytest.mark.cluster

OUTCOME = "testenv.diffusion.dev/outcome"


def gpu_pod(name: str, pool, num_gpus: int, annotations: dict[str, str] | None = None) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": pool.node_selector,
            "tolerations": pool.tolerations,
            "containers": [
                {
                    "name": "worker",
                    "image": "trainer:test",
                    "resources": {"limits": {"nvidia.com/gpu": str(num_gpus)}},
                }
            ],
        },
    }


def pod_phase(core_api, namespace: str, name: str) -> str:
    return core_api.read_namespaced_pod(name, namespace).status.phase


def wait_for_phase(core_api, namespace: str, name: str, phase: str, timeout_s: float = 60):
    return wait_until(
        lambda: (
            pod_phase(core_api, namespace, name) == phase
            and core_api.read_namespaced_pod(name, namespace)
        ),
        timeout_s=timeout_s,
        what=f"pod {name} to be {phase}",
    )


def terminated_state(pod):
    return pod.status.container_statuses[0].state.terminated


def test_eight_gpu_pod_binds_to_a100_node_and_runs(core_api, namespace, make_gpu_pool):
    pool = make_gpu_pool(num_nodes=1)
    core_api.create_namespaced_pod(namespace, gpu_pod("w0", pool, num_gpus=8))
    pod = wait_for_phase(core_api, namespace, "w0", "Running")
    assert pod.spec.node_name == pool.node_names[0]
    node = core_api.read_node(pod.spec.node_name)
    assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
    assert node.status.allocatable["nvidia.com/gpu"] == "8"


def test_ninth_gpu_pod_stays_pending_with_failed_scheduling(core_api, namespace, make_gpu_pool):
    pool = make_gpu_pool(num_nodes=1)
    for index in range(8):
        core_api.create_namespaced_pod(namespace, gpu_pod(f"w{index}", pool, num_gpus=1))
    for index in range(8):
        wait_for_phase(core_api, namespace, f"w{index}", "Running")
    core_api.create_namespaced_pod(namespace, gpu_pod("w8", pool, num_gpus=1))

    def failed_scheduling_event():
        events = core_api.list_namespaced_event(
            namespace, field_selector="involvedObject.name=w8,reason=FailedScheduling"
        ).items
        return events[0] if events else None

    event = wait_until(failed_scheduling_event, timeout_s=60, what="FailedScheduling for w8")
    assert "Insufficient nvidia.com/gpu" in event.message
    pod = core_api.read_namespaced_pod("w8", namespace)
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None


def test_pod_without_gpu_toleration_is_not_scheduled_on_gpu_pool(
    core_api, namespace, make_gpu_pool
):
    pool = make_gpu_pool(num_nodes=1)
    pod = gpu_pod("untolerated", pool, num_gpus=1)
    pod["spec"]["tolerations"] = []
    core_api.create_namespaced_pod(namespace, pod)

    def untolerated_taint_event():
        events = core_api.list_namespaced_event(
            namespace, field_selector="involvedObject.name=untolerated,reason=FailedScheduling"
        ).items
        return [e for e in events if "untolerated taint" in e.message]

    wait_until(untolerated_taint_event, timeout_s=60, what="FailedScheduling on the GPU taint")


def test_annotation_fails_pod_with_exit_code_137(core_api, namespace, make_gpu_pool):
    pool = make_gpu_pool(num_nodes=1)
    core_api.create_namespaced_pod(namespace, gpu_pod("oom", pool, num_gpus=1))
    wait_for_phase(core_api, namespace, "oom", "Running")
    core_api.patch_namespaced_pod(
        "oom",
        namespace,
        {
            "metadata": {
                "annotations": {
                    OUTCOME: "Failed",
                    "testenv.diffusion.dev/exit-code": "137",
                    "testenv.diffusion.dev/reason": "OOMKilled",
                }
            }
        },
    )
    pod = wait_for_phase(core_api, namespace, "oom", "Failed")
    terminated = terminated_state(pod)
    assert terminated.exit_code == 137
    assert terminated.reason == "OOMKilled"


def test_annotation_succeeds_pod(core_api, namespace, make_gpu_pool):
    pool = make_gpu_pool(num_nodes=1)
    core_api.create_namespaced_pod(namespace, gpu_pod("ok", pool, num_gpus=1))
    wait_for_phase(core_api, namespace, "ok", "Running")
    core_api.patch_namespaced_pod(
        "ok", namespace, {"metadata": {"annotations": {OUTCOME: "Succeeded"}}}
    )
    pod = wait_for_phase(core_api, namespace, "ok", "Succeeded")
    assert terminated_state(pod).exit_code == 0


def test_delayed_outcome_runs_first(core_api, namespace, make_gpu_pool):
    pool = make_gpu_pool(num_nodes=1)
    annotations = {OUTCOME: "Succeeded", "testenv.diffusion.dev/run-for": "4s"}
    core_api.create_namespaced_pod(namespace, gpu_pod("later", pool, 1, annotations))
    wait_for_phase(core_api, namespace, "later", "Running")
    assert pod_phase(core_api, namespace, "later") == "Running"
    wait_for_phase(core_api, namespace, "later", "Succeeded", timeout_s=30)


def test_disruption_sets_disruption_target_condition(core_api, namespace, make_gpu_pool):
    pool = make_gpu_pool(num_nodes=1)
    core_api.create_namespaced_pod(namespace, gpu_pod("victim", pool, num_gpus=1))
    wait_for_phase(core_api, namespace, "victim", "Running")
    core_api.patch_namespaced_pod(
        "victim",
        namespace,
        {
            "metadata": {
                "annotations": {"testenv.diffusion.dev/disruption": "PreemptionByScheduler"}
            }
        },
    )
    pod = wait_for_phase(core_api, namespace, "victim", "Failed")
    conditions = {c.type: c for c in pod.status.conditions}
    assert conditions["DisruptionTarget"].status == "True"
    assert conditions["DisruptionTarget"].reason == "PreemptionByScheduler"


def test_pod_ip_override(core_api, namespace, make_gpu_pool):
    pool = make_gpu_pool(num_nodes=1)
    annotations = {"testenv.diffusion.dev/pod-ip": "127.0.0.5"}
    core_api.create_namespaced_pod(namespace, gpu_pod("pinned", pool, 1, annotations))
    pod = wait_for_phase(core_api, namespace, "pinned", "Running")
    assert pod.status.pod_ip == "127.0.0.5"


def test_job_controller_creates_pods_and_deletion_collects_them(
    core_api, batch_api, namespace, make_gpu_pool
):
    pool = make_gpu_pool(num_nodes=2)
    template = gpu_pod(
        "unused",
        pool,
        num_gpus=8,
        annotations={OUTCOME: "Succeeded", "testenv.diffusion.dev/run-for": "2s"},
    )
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "gang"},
        "spec": {
            "completionMode": "Indexed",
            "completions": 2,
            "parallelism": 2,
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": template["metadata"]["annotations"]},
                "spec": template["spec"],
            },
        },
    }
    batch_api.create_namespaced_job(namespace, job)

    def job_pods():
        pods = core_api.list_namespaced_pod(namespace, label_selector="job-name=gang").items
        return pods if len(pods) == 2 else None

    pods = wait_until(job_pods, timeout_s=60, what="two pods from the Job controller")
    assert {p.metadata.owner_references[0].kind for p in pods} == {"Job"}
    assert {
        p.spec.node_name
        for p in wait_until(
            lambda: all(p.spec.node_name for p in job_pods() or []) and job_pods(),
            timeout_s=60,
            what="both pods bound",
        )
    } == set(pool.node_names)

    def job_complete():
        status = batch_api.read_namespaced_job("gang", namespace).status
        return any(c.type == "Complete" and c.status == "True" for c in status.conditions or [])

    wait_until(job_complete, timeout_s=90, what="Job gang to complete")
    batch_api.delete_namespaced_job("gang", namespace, propagation_policy="Background")
    wait_until(
        lambda: not core_api.list_namespaced_pod(namespace, label_selector="job-name=gang").items,
        timeout_s=60,
        what="the garbage collector to delete the Job's pods",
    )


def test_garbage_collector_deletes_owned_objects(core_api, namespace):
    owner = core_api.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    owner_ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner.metadata.uid,
    }
    core_api.create_namespaced_config_map(
        namespace, {"metadata": {"name": "owned", "ownerReferences": [owner_ref]}}
    )
    core_api.delete_namespaced_config_map("owner", namespace)

    def owned_gone():
        names = {c.metadata.name for c in core_api.list_namespaced_config_map(namespace).items}
        return "owned" not in names

    wait_until(owned_gone, timeout_s=60, what="the garbage collector to delete 'owned'")


def test_node_made_not_ready_is_seen_by_the_api(core_api, make_gpu_pool):
    pool = make_gpu_pool(num_nodes=1)
    node = pool.node_names[0]
    wait_until(lambda: node_ready_status(core_api, node) == "True", 30, f"{node} Ready")
    set_node_ready(core_api, node, ready=False, reason="GpuXid79")
    wait_until(lambda: node_ready_status(core_api, node) == "False", 30, f"{node} NotReady")
    set_node_ready(core_api, node, ready=True)
    wait_until(lambda: node_ready_status(core_api, node) == "True", 30, f"{node} Ready again")
