"""Fixtures shared by the cluster and e2e tiers: a real local control plane and fake GPU pools."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CONTROL_PLANE_FIXTURE = "control_plane"


@pytest.fixture(scope="session")
def control_plane() -> Iterator:
    """The real control plane: attached via DTJ_TESTENV_KUBECONFIG, or built and started here."""
    from testenv import controlplane

    existing = os.environ.get("DTJ_TESTENV_KUBECONFIG")
    plane = (
        controlplane.attach_control_plane(Path(existing))
        if existing
        else controlplane.start_control_plane()
    )
    yield plane
    if plane.owned:
        controlplane.stop_control_plane()


@pytest.fixture(scope="session")
def built_images() -> dict[str, str]:
    """{"operator": image, "trainer": image}: both Dockerfiles built here once per session
    (tools/images/build.sh; cached layers make a rebuild of unchanged sources quick)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [str(root / "tools" / "images" / "build.sh")],
        capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    images = [line.split()[0] for line in result.stdout.splitlines() if " built in " in line]
    return {image.rsplit("/", 1)[1].split(":")[0]: image for image in images}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.failed and CONTROL_PLANE_FIXTURE in getattr(item, "fixturenames", ()):
        plane = item.funcargs.get(CONTROL_PLANE_FIXTURE) if hasattr(item, "funcargs") else None
        if plane is not None:
            report.sections.append(("control plane logs (tail)", plane.tail_logs()))
    return report


@pytest.fixture(scope="session")
def api_client(control_plane):
    from kubernetes import config

    return config.new_client_from_config(config_file=str(control_plane.kubeconfig))


@pytest.fixture(scope="session")
def core_api(api_client):
    from kubernetes import client

    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def batch_api(api_client):
    from kubernetes import client

    return client.BatchV1Api(api_client)


@pytest.fixture
def namespace(core_api) -> Iterator[str]:
    """A fresh namespace per test, ready for pods (its default ServiceAccount exists)."""
    from testenv.waiting import wait_until

    name = f"t-{uuid.uuid4().hex[:8]}"
    core_api.create_namespace({"metadata": {"name": name, "labels": {"testenv": "true"}}})
    wait_until(
        lambda: core_api.read_namespaced_service_account("default", name),
        timeout_s=30,
        what=f"serviceaccount {name}/default",
    )
    yield name
    core_api.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def make_gpu_pool(core_api) -> Iterator[Callable]:
    """Factory: make_gpu_pool(num_nodes=1, shape="a100") -> GpuPool, deleted after the test."""
    from testenv.gpu_pool import create_gpu_pool, delete_gpu_pool

    created: list[str] = []

    def make(num_nodes: int = 1, shape: str = "a100"):
        pool = create_gpu_pool(core_api, f"{shape}-{uuid.uuid4().hex[:6]}", num_nodes, shape)
        created.append(pool.name)
        return pool

    yield make
    for name in created:
        delete_gpu_pool(core_api, name)


@pytest.fixture(scope="session")
def tool_bin_dir() -> Path:
    """Where kubectl, helm and promtool live (built from Go modules once, then cached)."""
    from testenv.controlplane import build_binaries

    return build_binaries()


@pytest.fixture(scope="session")
def helm(tool_bin_dir: Path) -> Path:
    return tool_bin_dir / "helm"


@pytest.fixture(scope="session")
def promtool(tool_bin_dir: Path) -> Path:
    path = tool_bin_dir / "promtool"
    assert path.is_file(), f"{path} is missing: tools/testenv/build.sh builds it"
    return path
