"""The chart next to a real Prometheus Operator API: with its CRDs installed, `helm install`
creates the PodMonitors and the PrometheusRule, and the API server stores every field the chart
wrote (nothing pruned as unknown, nothing refused)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from chart_tools import run_tool

from testenv.monitoring_crds import prometheus_operator_crds

pytestmark = pytest.mark.cluster

MONITORING = ("monitoring.coreos.com", "v1")
PLURALS = {"PodMonitor": "podmonitors", "PrometheusRule": "prometheusrules"}


@pytest.fixture(scope="module")
def prometheus_operator_api(control_plane) -> Iterator[None]:
    """The monitoring.coreos.com/v1 CRDs, removed again so other tests see a plain cluster."""
    files = [arg for path in prometheus_operator_crds() for arg in ("-f", str(path))]
    control_plane.kubectl("apply", "--server-side", *files)
    control_plane.wait_established(*files)
    yield
    control_plane.kubectl("delete", "--ignore-not-found", "--wait=true", *files)


def differences(written: Any, stored: Any, path: str = "spec") -> list[str]:
    """Where the stored object lacks or changed something the chart wrote (defaults may add)."""
    if isinstance(written, dict) and isinstance(stored, dict):
        return [
            problem
            for key, value in written.items()
            for problem in (
                differences(value, stored[key], f"{path}.{key}")
                if key in stored
                else [f"{path}.{key}: dropped"]
            )
        ]
    if isinstance(written, list) and isinstance(stored, list) and len(written) == len(stored):
        return [
            problem
            for index, (item, kept) in enumerate(zip(written, stored, strict=True))
            for problem in differences(item, kept, f"{path}[{index}]")
        ]
    return [] if written == stored else [f"{path}: wrote {written!r}, stored {stored!r}"]


def monitoring_objects(manifest: str) -> list[dict[str, Any]]:
    return [
        doc
        for doc in yaml.safe_load_all(manifest)
        if doc and doc["apiVersion"] == "/".join(MONITORING)
    ]


def test_monitors_and_rules_install_whole_where_the_api_exists(
    prometheus_operator_api, install_chart, helm, control_plane, test_namespace
):
    release = install_chart({"monitoring.labels.release": "kps"})
    manifest = run_tool(
        helm, "get", "manifest", release.name, f"--namespace={release.namespace}",
        f"--kubeconfig={control_plane.kubeconfig}",
    )  # fmt: skip
    assert manifest.returncode == 0, manifest.stderr
    written = monitoring_objects(manifest.stdout)
    assert sorted((o["kind"], o["metadata"]["name"]) for o in written) == [
        ("PodMonitor", release.fullname),
        ("PodMonitor", f"{release.fullname}-workers"),
        ("PrometheusRule", release.fullname),
    ]
    for obj in written:
        stored = test_namespace.custom.get_namespaced_custom_object(
            *MONITORING, release.namespace, PLURALS[obj["kind"]], obj["metadata"]["name"]
        )
        assert stored["metadata"]["labels"]["release"] == "kps"
        assert differences(obj["spec"], stored["spec"]) == [], obj["kind"]
