"""`kubectl dtj` against the real control plane, as a user runs it (the `kubectl-dtj` executable
with --kubeconfig and -n): submit's dry-run output applies as is; list and describe show a
failed attempt's reason after a gang restart; suspend and resume reach the operator."""

from __future__ import annotations

import json
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
    control_plane, make_gpu_pool, operator, dtjs, namespace
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

    assert run_plugin(control_plane, namespace, "suspend", "cli").returncode == 0
    dtjs.wait_phase("cli", "Suspended")
    assert run_plugin(control_plane, namespace, "resume", "cli").returncode == 0
    wait_until(lambda: dtjs.status("cli").get("phase") != "Suspended", 60, "resumed")


def test_bad_input_names_the_field_or_the_job(control_plane, dtjs, namespace):
    bad = run_plugin(
        control_plane, namespace, "submit", "--preset", "tiny-cpu", "--set", "training.lr=7"
    )
    assert bad.returncode == 2
    assert "spec.training.lr" in bad.stderr, bad.stderr
    missing = run_plugin(control_plane, namespace, "describe", "no-such-job")
    assert missing.returncode == 1
    assert "404" in missing.stderr, missing.stderr
