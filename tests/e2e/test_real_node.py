"""The product as a new user meets it, on a real node (tools/node: a kubelet with containerd,
runc and CNI bridge networking) running the images built here: `helm install` runs the operator
as a pod, and the first job the docs give (README, docs/install.md, the chart's NOTES), applied
exactly as written, trains in a container and Succeeds. The node leaves nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from testenv.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "manifests" / "examples" / "tiny-cpu.yaml"
CHART_DIR = ROOT / "helm" / "diffusion-operator"
NODE_NAME = "dtj-node-e2e"


def run_script(*args: str, env: dict[str, str], timeout_s: float) -> str:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout_s, env=env,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout


@pytest.fixture(scope="module")
def real_node(control_plane, built_images, tmp_path_factory) -> Iterator[dict[str, str]]:
    """The node against the session control plane with the images imported; the trainer also
    under the release name the example asks for. Yields the images by role."""
    images = built_images
    node_dir = tmp_path_factory.mktemp("real-node")
    env = {**os.environ, "DTJ_NODE_DIR": str(node_dir), "DTJ_NODE_NAME": NODE_NAME}
    release_trainer = yaml.safe_load(EXAMPLE.read_text())["spec"]["image"]
    run_script(
        ROOT / "tools" / "node" / "up.sh", control_plane.kubeconfig, images["operator"],
        f"{images['trainer']}={release_trainer}", env=env, timeout_s=900,
    )  # fmt: skip
    yield images
    run_script(ROOT / "tools" / "node" / "down.sh", env=env, timeout_s=180)
    assert NODE_NAME not in control_plane.kubectl("get", "nodes", "-o", "name")
    mounts = Path("/proc/mounts").read_text()
    assert str(node_dir) not in mounts, "the kubelet's mounts outlived the node"
    assert not node_dir.exists()


def pods_of(control_plane, namespace: str, selector: str) -> list[dict]:
    listed = control_plane.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json")
    return yaml.safe_load(listed)["items"]


def helm(control_plane, tool_bin_dir: Path, *args: str) -> str:
    return run_script(
        tool_bin_dir / "helm", *args, f"--kubeconfig={control_plane.kubeconfig}",
        env=dict(os.environ), timeout_s=180,
    )  # fmt: skip


def test_helm_installed_operator_pod_runs_the_documented_first_job_in_containers(
    real_node, control_plane, tool_bin_dir, crd, namespace
):
    release = f"dtj-{uuid.uuid4().hex[:6]}"
    operator_repository, operator_tag = real_node["operator"].rsplit(":", 1)
    helm(
        control_plane, tool_bin_dir, "install", release, str(CHART_DIR), f"--namespace={namespace}",
        f"--set=image.repository={operator_repository}", f"--set=image.tag={operator_tag}",
        "--set=replicaCount=1", "--set=operator.progressIntervalSeconds=2",
        "--set-string=nodeSelector.diffusion\\.dev/real-node=true", "--wait", "--timeout=150s",
    )  # fmt: skip
    try:
        (operator_pod,) = pods_of(control_plane, namespace, "app.kubernetes.io/instance=" + release)
        assert operator_pod["spec"]["nodeName"] == NODE_NAME
        assert operator_pod["status"]["containerStatuses"][0]["ready"] is True
        tested = helm(control_plane, tool_bin_dir, "test", release, f"-n={namespace}")
        assert re.search(r"Phase:\s+Succeeded", tested), tested  # dtj selfcheck passed

        name = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]
        control_plane.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
        wait_until(
            lambda: job_phase(control_plane, namespace, name) in ("Succeeded", "Failed"),
            timeout_s=480, what=f"{name} finished",
        )  # fmt: skip
        status = yaml.safe_load(
            control_plane.kubectl("get", "dtj", name, "-n", namespace, "-o", "json")
        )["status"]
        assert status["phase"] == "Succeeded", status
        assert status["checkpoint"]["step"] == 100, status

        (worker,) = pods_of(control_plane, namespace, f"diffusion.dev/job-name={name}")
        assert worker["spec"]["nodeName"] == NODE_NAME
        container = worker["status"]["containerStatuses"][0]
        assert container["containerID"].startswith("containerd://")
        assert container["state"]["terminated"]["exitCode"] == 0
        # Logs served by the real kubelet, through the API server.
        log = control_plane.kubectl("logs", "-n", namespace, worker["metadata"]["name"])
        assert "step=100/100" in log, log[-2000:]
        assert "step=100/100" in kubectl_dtj(control_plane, namespace, "logs", name).stdout
        no_rank = kubectl_dtj(control_plane, namespace, "logs", name, "--rank", "1")
        assert "has no rank 1 (ranks: 0)" in no_rank.stderr, no_rank.stderr
    finally:
        helm(control_plane, tool_bin_dir, "uninstall", release, f"-n={namespace}", "--wait")
    wait_until(
        lambda: not pods_of(control_plane, namespace, "app.kubernetes.io/instance=" + release),
        timeout_s=60, what="the operator pod gone",
    )  # fmt: skip
    # Uninstalling the operator keeps the CRD (Helm never deletes crds/), the job and its record.
    assert job_phase(control_plane, namespace, name) == "Succeeded"


def kubectl_dtj(control_plane, namespace: str, *args: str) -> subprocess.CompletedProcess:
    plugin = Path(sys.executable).parent / "kubectl-dtj"
    return subprocess.run(
        [str(plugin), f"--kubeconfig={control_plane.kubeconfig}", "-n", namespace, *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def job_phase(control_plane, namespace: str, name: str) -> str:
    return control_plane.kubectl(
        "get", "dtj", name, "-n", namespace, "-o", "jsonpath={.status.phase}", check=False
    )
