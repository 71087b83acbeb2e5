"""E2e-tier fixtures: the local node agent (a subprocess), a shared synthetic dataset on a
hostPath PV, and the cluster tier's operator and job helpers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_harness import LocalNode

from testenv.fixture_reuse import load_cluster_fixtures
from testenv.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


_cluster = load_cluster_fixtures("dtj_cluster_fixtures")
crd = _cluster.crd
run_operator = _cluster.run_operator
operator = _cluster.operator
dtjs = _cluster.dtjs


@pytest.fixture(scope="session")
def local_node(control_plane, tmp_path_factory) -> Iterator[LocalNode]:
    """The node agent against the session control plane (tainted: only pods that tolerate it);
    on stop nothing may be left."""
    yield from run_local_node(control_plane, tmp_path_factory.mktemp("localnode"))


@pytest.fixture
def open_local_node(control_plane, tmp_path) -> Iterator[LocalNode]:
    """A second agent whose node takes any pod, as a fresh cluster's nodes do."""
    yield from run_local_node(control_plane, tmp_path / "open-node", "--no-taint")


def run_local_node(control_plane, state_dir: Path, *extra_args: str) -> Iterator[LocalNode]:
    tag = uuid.uuid4().hex[:4]
    state_dir.mkdir(parents=True, exist_ok=True)
    node = LocalNode(
        f"e2e-{tag}",
        state_dir,
        f"dtje{tag}",
        start_agent(control_plane, tag, state_dir, *extra_args),
    )
    wait_until(
        lambda: (
            "True"
            in control_plane.kubectl(
                "get",
                "node",
                node.name,
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                check=False,
            )
        ),
        timeout_s=60,
        what=f"node {node.name} Ready",
    )
    yield node
    node.process.send_signal(signal.SIGTERM)
    assert node.process.wait(timeout=90) == 0, node.log_tail()
    assert node.processes() == [], "pod processes outlived the agent"
    assert node.netns() == [], "network namespaces outlived the agent"


def start_agent(control_plane, tag: str, state_dir: Path, *extra_args: str) -> subprocess.Popen:
    log = (state_dir / "agent.log").open("wb")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localnode",
            f"--kubeconfig={control_plane.kubeconfig}",
            f"--node-name=e2e-{tag}",
            f"--state-dir={state_dir}",
            f"--bridge=dtje2e-{tag}",
            f"--subnet=10.78.{int(tag, 16) % 200 + 20}.0/24",
            f"--netns-prefix=dtje{tag}",
            *extra_args,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "tools")},
    )


@pytest.fixture(scope="session")
def shared_volume(tmp_path_factory) -> Path:
    """A hostPath volume holding the synthetic dataset, made once per session."""
    root = tmp_path_factory.mktemp("volume")
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "dtj"),
            "data",
            "synth",
            "--out",
            str(root / "synthetic"),
            "--num-samples",
            "32",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.fixture
def data_claim(core_api, namespace, shared_volume) -> Iterator[str]:
    """A PVC in the test's namespace bound to a hostPath PV on the shared volume."""
    name = f"dtj-e2e-{namespace}"
    core_api.create_persistent_volume(
        {
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": str(shared_volume)},
                "claimRef": {"namespace": namespace, "name": "data"},
            },
        }
    )
    core_api.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "data"},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": name,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    wait_until(
        lambda: (
            core_api.read_namespaced_persistent_volume_claim("data", namespace).status.phase
            == "Bound"
        ),
        timeout_s=60,
        what="pvc data Bound",
    )
    yield "data"
    core_api.delete_persistent_volume(name)
