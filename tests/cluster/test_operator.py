"""The operator against the real control plane and a fake A100 pool: from apply to Succeeded."""

from __future__ import annotations

import subprocess

import pytest

from testenv.waiting import wait_until

pytestmark = pytest.mark.cluster

OUTCOME = "testenv.diffusion.dev/outcome"


def finish_pods(dtjs, pods, outcome: str = "Succeeded", **extra: str) -> None:
    for pod in pods:
        dtjs.annotate_pod(pod.metadata.name, {OUTCOME: outcome, **extra})


def test_job_runs_on_gpu_nodes_and_succeeds(
    dtjs, make_gpu_pool, operator, control_plane, job_spec, operator_metrics
):
    pool = make_gpu_pool(num_nodes=2)
    dtjs.create("ok", job_spec(pool))
    pods = dtjs.running_pods("ok", attempt=1, count=2)
    assert {p.spec.node_name for p in pods} == set(pool.node_names)
    assert {p.metadata.annotations["batch.kubernetes.io/job-completion-index"] for p in pods} == {
        "0",
        "1",
    }
    names = {cm.metadata.name for cm in dtjs.core.list_namespaced_config_map(dtjs.namespace).items}
    assert "ok-config" in names
    service = dtjs.core.read_namespaced_service("ok-workers", dtjs.namespace)
    assert service.spec.cluster_ip == "None"
    assert [j.metadata.name for j in dtjs.jobs("ok")] == ["ok-a1"]
    status = dtjs.wait_phase("ok", "Running")
    assert status["workers"]["ready"] == 2
    assert status["observedGeneration"] == 1

    table = control_plane.kubectl("get", "dtj", "-n", dtjs.namespace)
    header = table.splitlines()[0].split()
    assert header[:9] == [
        "NAME",
        "PHASE",
        "NODES",
        "STEP",
        "IMG/S",
        "LOSS",
        "ETA",
        "RESTARTS",
        "AGE",
    ]
    assert "Running" in table

    finish_pods(dtjs, pods)
    wait = subprocess.run(
        [
            str(control_plane.bin_dir / "kubectl"),
            f"--kubeconfig={control_plane.kubeconfig}",
            "-n",
            dtjs.namespace,
            "wait",
            "--for=condition=Succeeded",
            "dtj/ok",
            "--timeout=60s",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert wait.returncode == 0, wait.stderr
    status = dtjs.status("ok")
    assert status["phase"] == "Succeeded"
    assert status["completionTime"]
    reasons = {
        e.reason
        for e in dtjs.core.list_namespaced_event(
            dtjs.namespace, field_selector="involvedObject.name=ok"
        ).items
    }
    assert {"Created", "AllWorkersRunning", "AllWorkersSucceeded"} <= reasons

    samples = operator_metrics()
    gpu_key = (
        "dtj_operator_gpu_seconds_total",
        (("dtj_job", "ok"), ("dtj_namespace", dtjs.namespace)),
    )
    assert samples[gpu_key] > 0
    assert samples[("dtj_operator_reconcile_duration_seconds_count", ())] > 0


def test_an_oom_killed_worker_fails_the_job_and_names_the_knobs(
    dtjs, make_gpu_pool, operator, job_spec
):
    pool = make_gpu_pool(num_nodes=2)
    dtjs.create("oom", job_spec(pool))
    pods = dtjs.running_pods("oom", attempt=1, count=2)
    finish_pods(
        dtjs,
        pods[:1],
        "Failed",
        **{"testenv.diffusion.dev/exit-code": "137", "testenv.diffusion.dev/reason": "OOMKilled"},
    )
    dtjs.wait_phase("oom", "Failed")
    failed = dtjs.condition("oom", "Failed")
    assert failed["reason"] == "OOMKilled"
    assert "was OOMKilled (exit code 137)" in failed["message"]
    assert "spec.training.microBatchSize" in failed["message"]
    assert dtjs.status("oom")["restarts"] == 0


def test_a_pod_template_the_api_server_refuses_fails_the_job_with_its_reason(
    dtjs, make_gpu_pool, operator, job_spec
):
    pool = make_gpu_pool(num_nodes=2)
    spec = job_spec(pool)
    term = {"matchExpressions": [{"key": "zone", "operator": "Near", "values": ["a"]}]}
    spec["resources"]["affinity"] = {  # passed through by the CRD, refused by the Job API
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
        }
    }
    dtjs.create("badaffinity", spec)
    dtjs.wait_phase("badaffinity", "Failed", timeout_s=60)
    failed = dtjs.condition("badaffinity", "Failed")
    assert failed["reason"] == "InvalidPodTemplate"
    assert "Near" in failed["message"]
    assert dtjs.jobs("badaffinity") == []


def test_gang_restart_resumes_from_checkpoint_after_old_pods_are_gone(
    dtjs, make_gpu_pool, operator, job_spec, operator_metrics
):
    pool = make_gpu_pool(num_nodes=2)
    spec = job_spec(pool, failurePolicy={"maxRestarts": 1, "backoffSeconds": 1})
    dtjs.create("gang", spec)
    pods = dtjs.running_pods("gang", attempt=1, count=2)
    dtjs.wait_phase("gang", "Running")
    checkpoint = "/checkpoints/t/gang/step-00000200"
    dtjs.patch_status("gang", {"checkpoint": {"latestUri": checkpoint, "step": 200}})
    finish_pods(dtjs, pods[1:], "Failed", **{"testenv.diffusion.dev/exit-code": "1"})

    def second_job():
        return next((j for j in dtjs.jobs("gang") if j.metadata.name == "gang-a2"), None)

    job = wait_until(second_job, 60, "attempt 2's Job")
    # Attempt 1's running worker is gone before attempt 2 starts; its failed one stays (logs).
    kept = [(p.metadata.name, p.status.phase) for p in dtjs.pods("gang", attempt=1)]
    assert kept == [(pods[1].metadata.name, "Failed")], kept
    env = {e.name: e.value for e in job.spec.template.spec.containers[0].env}
    assert env["RESUME_FROM"] == checkpoint
    assert env["DTJ_ATTEMPT"] == "2"
    pods = dtjs.running_pods("gang", attempt=2, count=2)
    status = dtjs.wait_phase("gang", "Running")
    assert status["attempt"] == 2
    assert status["restarts"] == 1
    assert status["lastFailure"]["attempt"] == 1

    restart_key = (
        "dtj_operator_restarts_total",
        (
            ("action", "Restart"),
            ("class", "Error"),
            ("dtj_job", "gang"),
            ("dtj_namespace", dtjs.namespace),
            ("reason", "WorkerFailed"),
        ),
    )
    assert operator_metrics()[restart_key] == 1
    finish_pods(dtjs, pods[:1], "Failed", **{"testenv.diffusion.dev/exit-code": "1"})
    dtjs.wait_phase("gang", "Failed")
    message = dtjs.condition("gang", "Failed")["message"]
    assert "no restarts left (failurePolicy.maxRestarts: 1)" in message
    assert dtjs.status("gang")["restarts"] == 1


def start_then_suspend(dtjs, name: str, spec: dict) -> None:
    """A 2-worker job that ran, then suspended with its pods gone."""
    dtjs.create(name, spec)
    dtjs.running_pods(name, attempt=1, count=2)
    dtjs.patch_spec(name, {"runPolicy": {"suspend": True}})
    dtjs.wait_phase(name, "Suspended")
    wait_until(lambda: not dtjs.pods(name), 60, "suspended job's pods to be deleted")


def test_suspend_deletes_pods_and_resume_brings_them_back(dtjs, make_gpu_pool, operator, job_spec):
    start_then_suspend(dtjs, "pause", job_spec(make_gpu_pool(num_nodes=2)))
    assert dtjs.jobs("pause")[0].spec.suspend is True
    dtjs.patch_spec("pause", {"runPolicy": {"suspend": False}})
    dtjs.running_pods("pause", attempt=1, count=2)
    dtjs.wait_phase("pause", "Running")
    assert dtjs.status("pause")["restarts"] == 0


def test_a_spec_changed_while_suspended_resumes_as_a_new_attempt(
    dtjs, make_gpu_pool, operator, job_spec
):
    start_then_suspend(dtjs, "grow", job_spec(make_gpu_pool(num_nodes=3)))
    resized = {"nodes": 3}
    dtjs.patch_spec("grow", {"resources": resized, "training": {"globalBatchSize": 16 * 3 * 8}})
    dtjs.patch_spec("grow", {"runPolicy": {"suspend": False}})
    dtjs.running_pods("grow", attempt=2, count=3)
    dtjs.wait_phase("grow", "Running")
    wait_until(lambda: [j.metadata.name for j in dtjs.jobs("grow")] == ["grow-a2"], 60, "a1 to go")
    assert dtjs.jobs("grow")[0].spec.completions == 3
    assert dtjs.status("grow")["restarts"] == 0


def test_start_deadline_fails_a_job_that_cannot_be_scheduled(
    dtjs, make_gpu_pool, operator, job_spec
):
    pool = make_gpu_pool(num_nodes=1)
    spec = job_spec(pool, nodes=1, gpus=16, runPolicy={"startDeadlineSeconds": 5})
    dtjs.create("toobig", spec)
    dtjs.wait_phase("toobig", "Failed", timeout_s=60)
    failed = dtjs.condition("toobig", "Failed")
    assert failed["reason"] == "StartDeadlineExceeded"
    assert "Insufficient nvidia.com/gpu" in failed["message"]
    wait_until(lambda: not dtjs.pods("toobig"), 60, "pending pods to be removed")


def test_active_deadline_fails_a_running_job(dtjs, make_gpu_pool, operator, job_spec):
    pool = make_gpu_pool(num_nodes=2)
    dtjs.create("slow", job_spec(pool, runPolicy={"activeDeadlineSeconds": 4}))
    dtjs.running_pods("slow", attempt=1, count=2)
    dtjs.wait_phase("slow", "Failed", timeout_s=60)
    assert dtjs.condition("slow", "Failed")["reason"] == "DeadlineExceeded"
    wait_until(lambda: not dtjs.pods("slow"), 60, "workers to be stopped")


def test_ttl_deletes_a_finished_job_and_its_children(dtjs, make_gpu_pool, operator, job_spec):
    pool = make_gpu_pool(num_nodes=2)
    dtjs.create("brief", job_spec(pool, runPolicy={"ttlSecondsAfterFinished": 2}))
    finish_pods(dtjs, dtjs.running_pods("brief", attempt=1, count=2))
    dtjs.wait_phase("brief", "Succeeded")

    def gone():
        items = dtjs.custom.list_namespaced_custom_object(
            "diffusion.dev", "v1alpha1", dtjs.namespace, "diffusiontrainingjobs"
        )["items"]
        return not items

    wait_until(gone, 60, "the finished job to be deleted by its TTL")
    wait_until(lambda: not dtjs.jobs("brief"), 60, "the garbage collector to delete its Job")


def test_a_job_recreated_under_its_name_waits_for_the_old_ones_children(
    dtjs, make_gpu_pool, operator, job_spec
):
    spec = job_spec(make_gpu_pool(num_nodes=2))
    first = dtjs.create("twin", spec)
    dtjs.running_pods("twin", attempt=1, count=2)
    dtjs.custom.delete_namespaced_custom_object(
        "diffusion.dev", "v1alpha1", dtjs.namespace, "diffusiontrainingjobs", "twin",
        propagation_policy="Orphan",
    )  # fmt: skip
    wait_until(lambda: not dtjs.custom.list_namespaced_custom_object(
        "diffusion.dev", "v1alpha1", dtjs.namespace, "diffusiontrainingjobs")["items"],
        60, "the first twin to go")  # fmt: skip
    second = dtjs.create("twin", spec)
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    wait_until(
        lambda: dtjs.condition("twin", "Running").get("reason") == "WaitingForOldWorkers",
        60,
        "the new job to wait for the old workers",
    )
    assert [j.metadata.name for j in dtjs.jobs("twin")] == ["twin-a1"]  # still the old one
    dtjs.batch.delete_namespaced_job("twin-a1", dtjs.namespace, propagation_policy="Background")
    wait_until(
        lambda: any(
            ref.uid == second["metadata"]["uid"]
            for job in dtjs.jobs("twin")
            for ref in job.metadata.owner_references or []
        ),
        90,
        "the new job's own attempt",
    )
    dtjs.running_pods("twin", attempt=1, count=2, timeout_s=90)
    dtjs.wait_phase("twin", "Running")


def test_a_job_whose_attempt_name_is_taken_says_so_and_waits(
    dtjs, make_gpu_pool, operator, job_spec
):
    squatter = {
        "metadata": {"name": "solo-a1"},
        "spec": {
            "suspend": True,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "busybox"}],
                }
            },
        },
    }
    dtjs.batch.create_namespaced_job(dtjs.namespace, squatter)
    dtjs.create("solo", job_spec(make_gpu_pool(num_nodes=2)))
    wait_until(
        lambda: dtjs.condition("solo", "Running").get("reason") == "WaitingForOldJob",
        60,
        "the name conflict to be reported",
    )
    assert "solo-a1" in dtjs.condition("solo", "Running")["message"]
    dtjs.batch.delete_namespaced_job("solo-a1", dtjs.namespace, propagation_policy="Background")
    dtjs.running_pods("solo", attempt=1, count=2, timeout_s=90)
    dtjs.wait_phase("solo", "Running")


def test_deleting_a_running_job_leaves_no_orphans(dtjs, make_gpu_pool, operator, job_spec):
    pool = make_gpu_pool(num_nodes=2)
    dtjs.create("doomed", job_spec(pool))
    dtjs.running_pods("doomed", attempt=1, count=2)
    dtjs.delete("doomed")

    def orphans():
        ns = dtjs.namespace
        left = [j.metadata.name for j in dtjs.jobs("doomed")]
        left += [p.metadata.name for p in dtjs.pods("doomed")]
        left += [s.metadata.name for s in dtjs.core.list_namespaced_service(ns).items]
        left += [
            c.metadata.name
            for c in dtjs.core.list_namespaced_config_map(ns).items
            if c.metadata.name.startswith("doomed")
        ]
        return left

    wait_until(lambda: not orphans(), 90, f"no children left (still: {orphans()})")


def test_restart_after_crash_between_job_creation_and_status_keeps_one_job(
    dtjs, make_gpu_pool, run_operator, job_spec
):
    """The operator died after creating attempt 1's Job but before writing status."""
    from diffusion_operator.builders import Owner
    from diffusion_operator.spec import DiffusionTrainingJobSpec
    from diffusion_operator.worker_job import AttemptInputs, build_worker_job

    pool = make_gpu_pool(num_nodes=2)
    spec = job_spec(pool)
    created = dtjs.create("crash", spec)
    owner = Owner("crash", dtjs.namespace, created["metadata"]["uid"])
    parsed = DiffusionTrainingJobSpec.model_validate(created["spec"])
    dtjs.batch.create_namespaced_job(
        dtjs.namespace, build_worker_job(owner, parsed, AttemptInputs(attempt=1))
    )
    assert dtjs.status("crash") == {}

    run_operator()
    status = dtjs.wait_phase("crash", "Running")
    assert status["attempt"] == 1
    assert [j.metadata.name for j in dtjs.jobs("crash")] == ["crash-a1"]
    assert len(dtjs.pods("crash")) == 2
