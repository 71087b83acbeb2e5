"""The first job the docs (README, docs/install.md, the chart's NOTES) give a new user,
applied exactly as written on a node that takes any pod: it brings its own data and Succeeds."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
EXAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "tiny-cpu.yaml"


def test_the_documented_first_job_succeeds_as_written(
    control_plane, open_local_node, operator, dtjs, namespace
):
    name = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]
    control_plane.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
    status = dtjs.wait_phase(name, "Succeeded", timeout_s=480)
    assert status["checkpoint"]["step"] == 100, status
    assert status["checkpoint"]["latestUri"].startswith("/tmp/dtj-checkpoints/tiny-cpu/")
    assert [pod.spec.node_name for pod in dtjs.pods(name)] == [open_local_node.name]
