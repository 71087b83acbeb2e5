"""The chart's life on a cluster, the documented way: `helm install` creates the CRD, a job
runs, the CRD and the chart are upgraded with the commands of docs/install.md, and
`helm uninstall` leaves the CRD and the job in place as promised."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from chart_tools import CHART_DIR, CRD_NAME, ROOT, UNSCHEDULABLE, Release, run_tool, set_flags
from test_chart_install import (
    GROUP,
    PLURAL,
    VERSION,
    create_training_job,
    job_spec,
    operator_process,
    pods_matching,
    training_job_phase,
)

from testenv.waiting import wait_until

pytestmark = pytest.mark.cluster

INSTALL_DOC = ROOT / "docs" / "install.md"
CRD_FILE = "manifests/crd.yaml"
CHANGED_DESCRIPTION = "Images per optimizer step (changed by the upgrade test)."


def documented_crd_upgrade() -> list[str]:
    """The kubectl command that docs/install.md's Upgrading section gives for the CRD."""
    section = INSTALL_DOC.read_text().split("## Upgrading", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, "docs/install.md: no bash block under Upgrading"
    (command,) = [line for line in block.group(1).splitlines() if CRD_FILE in line]
    return command.split()


def write_changed_crd(path: Path) -> Path:
    text = (ROOT / CRD_FILE).read_text()
    assert "description: Images per optimizer step." in text
    path.write_text(text.replace("Images per optimizer step.", CHANGED_DESCRIPTION))
    return path


def crd_managers(control_plane) -> set[str]:
    crd = json.loads(
        control_plane.kubectl("get", "crd", CRD_NAME, "-o", "json", "--show-managed-fields")
    )
    return {field["manager"] for field in crd["metadata"]["managedFields"]}


def wait_established(control_plane) -> None:
    control_plane.wait_established(f"crd/{CRD_NAME}")


def helm_release(helm, control_plane, action: str, release: Release, values: dict) -> None:
    result = run_tool(
        helm, action, release.name, CHART_DIR, f"--namespace={release.namespace}",
        f"--kubeconfig={control_plane.kubeconfig}", *set_flags({**UNSCHEDULABLE, **values}),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def uninstall(helm, control_plane, release: Release) -> Any:
    return run_tool(
        helm, "uninstall", release.name, f"--namespace={release.namespace}",
        f"--kubeconfig={control_plane.kubeconfig}", "--wait", "--ignore-not-found",
    )  # fmt: skip


def test_install_upgrade_uninstall_the_documented_way(
    helm, control_plane, test_namespace, make_gpu_pool, token_kubeconfig, tmp_path
):
    ns, kubectl = test_namespace, control_plane.kubectl
    release = Release(f"life-{uuid.uuid4().hex[:6]}", ns.name, "")
    # As on a fresh cluster: Helm creates the CRD from crds/.
    kubectl("delete", "crd", CRD_NAME, "--ignore-not-found", "--wait=true")
    try:
        helm_release(helm, control_plane, "install", release, {})
        wait_established(control_plane)
        assert "helm" in crd_managers(control_plane)
        pool = make_gpu_pool(num_nodes=2)
        spec = job_spec(
            pool.node_selector, pool.tolerations, serviceAccountName=release.worker_service_account
        )
        with operator_process(token_kubeconfig(release), release, tmp_path / "operator.log"):
            create_training_job(ns, "kept", spec)
            pods_matching(ns, "diffusion.dev/job-name=kept", 2, phase="Running")
            wait_until(lambda: training_job_phase(ns, "kept") == "Running", 60, "kept Running")

        command = documented_crd_upgrade()
        assert "--force-conflicts" in command  # Helm owns the fields it created
        changed = str(write_changed_crd(tmp_path / "crd.yaml"))
        kubectl(*[changed if arg == CRD_FILE else arg for arg in command[1:]])
        wait_established(control_plane)
        assert CHANGED_DESCRIPTION in kubectl("get", "crd", CRD_NAME, "-o", "json")
        helm_release(helm, control_plane, "upgrade", release, {"operator.logFormat": "text"})
        assert training_job_phase(ns, "kept") == "Running"  # the job went through both

        assert uninstall(helm, control_plane, release).returncode == 0
        kubectl("get", "crd", CRD_NAME)  # kept: Helm never deletes crds/
        job = ns.custom.get_namespaced_custom_object(GROUP, VERSION, ns.name, PLURAL, "kept")
        assert job["status"]["phase"] == "Running"
        accounts = {
            sa.metadata.name for sa in ns.core.list_namespaced_service_account(ns.name).items
        }
        assert release.service_account not in accounts
    finally:
        uninstall(helm, control_plane, release)  # cluster-scoped RBAC must not outlive the test
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / CRD_FILE))
        wait_established(control_plane)
