"""The observability files under test (the chart's rules and dashboards, the docs) and tools."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "diffusion-operator"
RULE_FILES = sorted((CHART_DIR / "rules").glob("*.yaml"))
DASHBOARD_FILES = sorted((CHART_DIR / "dashboards").glob("*.json"))
ALERTS_TEST = Path(__file__).parent / "alerts_test.yaml"
DOCS = ROOT / "docs" / "observability.md"
# Offline rendering: a version the chart accepts (kubeVersion), as in tests/packaging.
KUBE_VERSION = "1.33.0"
# The kinds a cluster with the Prometheus Operator serves, as `helm template --api-versions`.
PROMETHEUS_OPERATOR_API = (
    "monitoring.coreos.com/v1/PodMonitor,monitoring.coreos.com/v1/PrometheusRule"
)


def run_tool(*args: Any, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout_s, check=False
    )


def load_rules() -> list[dict[str, Any]]:
    """Every rule of every group of the chart's rule files."""
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def load_dashboards() -> dict[str, dict[str, Any]]:
    """File name -> dashboard, for the chart's dashboards/*.json."""
    return {path.name: json.loads(path.read_text()) for path in DASHBOARD_FILES}
