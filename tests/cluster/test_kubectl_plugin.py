"""`kubectl dtj` against the real control plane, as a user runs it (the `kubectl-dtj` executable
with --kubeconfig and -n): submit's dry-run output applies as is; list and describe show a
failed attempt's reason after a gang restart; suspend and resume reach the operator; watch
--until-done follows a job through Running to Succeeded and exits by itself; the bash completion
script offers the job names of the --kubeconfig and -n typed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testenv.waiting import wait_until

pytestmark = pytest.mark.cluster
PLUGIN = Path(sys.executable).parent / "kubectl-dtj"
OUTCOME = "testenv.diffusion.dev/outcome"


def run_plugin(control_plane, namespace: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PLUGIN), f"--kubeconfig={control_plane.kubeconfig}", "-n", namespace, *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def submit_args(pool, name: str) -> list[str]:
    selector = {k.replace(".", "\\."): v for k, v in pool.node_selector.items()}
    return [
        "submit", "--preset", "tiny-cpu", "--name", name,
        "--image", "ghcr.io/diffusion-operator/trainer:test",
        "--set", "resources.nodes=2", "--set", "resources.gpusPerNode=8",
        "--set", "training.globalBatchSize=256", "--set", "training.microBatchSize=16",
        "--set", "failurePolicy.maxRestarts=1", "--set", "failurePolicy.backoffSeconds=1",
        *[f"--set=resources.nodeSelector.{key}={value}" for key, value in selector.items()],
        "--set", f"resources.tolerations={json.dumps(pool.tolerations)}",
    ]  # fmt: skip


def test_submit_list_describe_suspend_resume(
    control_plane, make_gpu_pool, operator, dtjs, namespace, tmp_path
):
    pool = make_gpu_pool(num_nodes=2)
    dry_run = run_plugin(control_plane, namespace, *submit_args(pool, "cli"), "--dry-run")
    assert dry_run.returncode == 0, dry_run.stderr
    assert yaml.safe_load(dry_run.stdout)["metadata"]["name"] == "cli"
    nothing = run_plugin(control_plane, namespace, "list")
    assert nothing.stdout.startswith("No DiffusionTrainingJobs"), nothing.stdout  # --dry-run
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input_text=dry_run.stdout)

    pods = dtjs.running_pods("cli", attempt=1, count=2)
    dtjs.wait_phase("cli", "Running")
    listed = run_plugin(control_plane, namespace, "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split()[:2] == ["cli", "Running"], listed.stdout

    rank_1 = next(p for p in pods if p.metadata.name.startswith("cli-a1-1"))
    dtjs.annotate_pod(
        rank_1.metadata.name, {OUTCOME: "Failed", "testenv.diffusion.dev/exit-code": "1"}
    )
    wait_until(lambda: dtjs.status("cli").get("attempt") == 2, 60, "attempt 2")
    described = run_plugin(control_plane, namespace, "describe", "cli")
    assert described.returncode == 0, described.stderr
    assert "Last failure: attempt 1:" in described.stdout, described.stdout
    assert "exit code 1" in described.stdout, described.stdout
    assert "Attempt:      2 (restarts 1" in described.stdout, described.stdout
    check_failed_rank_logs(control_plane, namespace, rank_1.metadata.name, tmp_path)

    assert run_plugin(control_plane, namespace, "suspend", "cli").returncode == 0
    dtjs.wait_phase("cli", "Suspended")
    assert run_plugin(control_plane, namespace, "resume", "cli").returncode == 0
    wait_until(lambda: dtjs.status("cli").get("phase") != "Suspended", 60, "resumed")


def check_failed_rank_logs(control_plane, namespace: str, pod_name: str, tmp_path: Path) -> None:
    """The failed rank 1 of attempt 1 stays after the restart, and its log is served (by kwok's
    kubelet API, from a CRI-format file, through the API server)."""
    log_file = tmp_path / f"{pod_name}.log"
    log_file.write_text(
        "2026-01-01T00:00:00.000000000Z stdout F step=40/100 loss=0.5\n"
        "2026-01-01T00:00:01.000000000Z stderr F RuntimeError: rank 1 lost its GPU\n"
    )
    logs_object = {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Logs",
        "metadata": {"name": pod_name, "namespace": namespace},
        "spec": {"logs": [{"containers": ["trainer"], "logsFile": str(log_file)}]},
    }
    control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(logs_object))

    def rank_1_log():
        read = run_plugin(control_plane, namespace, "logs", "cli", "--rank=1", "--attempt=1")
        return read if read.returncode == 0 else None

    read = wait_until(rank_1_log, 30, "rank 1's log of attempt 1")
    assert read.stdout.splitlines()[-1] == "RuntimeError: rank 1 lost its GPU", read.stdout

    def rank_0_refused():  # once the Job controller has stopped rank 0
        read = run_plugin(control_plane, namespace, "logs", "cli", "--rank=0", "--attempt=1")
        return read if read.returncode != 0 else None

    stopped = wait_until(rank_0_refused, 30, "rank 0 of attempt 1 gone")
    assert "keeps its failed workers only" in stopped.stderr, stopped.stderr


def test_bad_input_names_the_field_or_the_job(control_plane, dtjs, namespace):
    bad = run_plugin(
        control_plane, namespace, "submit", "--preset", "tiny-cpu", "--set", "training.lr=7"
    )
    assert bad.returncode == 2
    assert "spec.training.lr" in bad.stderr, bad.stderr
    missing = run_plugin(control_plane, namespace, "describe", "no-such-job")
    assert missing.returncode == 1
    assert "404" in missing.stderr, missing.stderr


def phases_shown(output: str, name: str) -> list[str]:
    """The job's phase in each table watch printed, repeats folded: e.g. [Pending, Running]."""
    shown: list[str] = []
    for line in output.splitlines():
        cells = line.split()
        if cells[:1] == [name] and cells[1:2] and cells[1] not in shown[-1:]:
            shown.append(cells[1])
    return shown


def bash_complete(*comp_words: str) -> list[str]:
    """COMPREPLY of the `kubectl dtj completion bash` script for <TAB> on the last word."""
    script = (
        'source <(kubectl-dtj completion bash) || exit 3; COMP_WORDS=("$@"); '
        'COMP_CWORD=$(($# - 1)); _kubectl_dtj; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    env = {**os.environ, "PATH": f"{PLUGIN.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        ["bash", "-c", script, "bash", *comp_words],
        capture_output=True, text=True, timeout=60, check=True, env=env,
    )  # fmt: skip
    return [line for line in done.stdout.splitlines() if line]


def test_watch_until_done_follows_a_job_to_succeeded(
    control_plane, make_gpu_pool, operator, dtjs, namespace, job_spec, tmp_path
):
    pool = make_gpu_pool(num_nodes=2)
    output = tmp_path / "watch.out"
    command = [
        str(PLUGIN), f"--kubeconfig={control_plane.kubeconfig}", "-n", namespace,
        "watch", "--until-done", "--interval", "0.5",
    ]  # fmt: skip
    with output.open("w") as sink:
        watch = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, text=True)
    try:
        dtjs.create("w", job_spec(pool))
        pods = dtjs.running_pods("w", attempt=1, count=2)
        dtjs.wait_phase("w", "Running")
        wait_until(lambda: "Running" in phases_shown(output.read_text(), "w"), 30, "watch: Running")
        assert watch.poll() is None, output.read_text()  # a running job does not end the watch

        typed = ["kubectl-dtj", "--kubeconfig", "=", str(control_plane.kubeconfig), "-n", namespace]
        assert bash_complete(*typed, "describe", "") == ["w"]
        assert bash_complete(*typed, "watch", "") == []

        for pod in pods:
            dtjs.annotate_pod(pod.metadata.name, {OUTCOME: "Succeeded"})
        dtjs.wait_phase("w", "Succeeded")
        returncode = watch.wait(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    shown = output.read_text()
    assert returncode == 0, shown
    phases = phases_shown(shown, "w")
    assert phases[-1] == "Succeeded", shown
    assert phases.index("Running") < phases.index("Succeeded"), shown
    assert shown.rstrip().splitlines()[-1].split()[:2] == ["w", "Succeeded"], shown
