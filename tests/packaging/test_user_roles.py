"""Namespace users get DiffusionTrainingJobs through Kubernetes' default roles: the chart's
ClusterRoles aggregate into view and edit, so a user bound to edit in a namespace creates and
deletes jobs there, and one bound to view reads them and nothing more."""

from __future__ import annotations

import pytest
from chart_tools import ROOT

from testenv.waiting import wait_until

pytestmark = pytest.mark.cluster
EXAMPLE = ROOT / "manifests" / "examples" / "tiny-cpu.yaml"
JOBS = "diffusiontrainingjobs.diffusion.dev"


def test_users_bound_to_edit_or_view_work_with_jobs(install_chart, control_plane, namespace, can_i):
    kubectl = control_plane.kubectl
    install_chart()
    kubectl("create", "rolebinding", "alice", "--clusterrole=edit", "--user=alice", "-n", namespace)
    kubectl("create", "rolebinding", "bob", "--clusterrole=view", "--user=bob", "-n", namespace)
    wait_until(
        lambda: can_i("alice", "create", JOBS, "-n", namespace), 30, "edit aggregates the jobs"
    )
    kubectl("apply", "--as=alice", "-n", namespace, "-f", str(EXAMPLE))
    assert "tiny-cpu" in kubectl("get", "dtj", "--as=bob", "-n", namespace, "-o", "name")
    assert not can_i("bob", "delete", JOBS, "-n", namespace)
    assert not can_i("alice", "create", JOBS, "-n", "kube-system")  # only where she is bound
    kubectl("delete", "dtj", "tiny-cpu", "--as=alice", "-n", namespace, "--wait=false")
