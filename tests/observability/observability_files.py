"""The observability files under test (the chart's rules and dashboards, the docs) and tools."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "diffusion-operator"
# The chart's rule files: thresholds are ${name} placeholders the chart fills from
# monitoring.rules.thresholds, so they are not Prometheus rule files as they are.
RULE_SOURCES = sorted((CHART_DIR / "rules").glob("*.yaml"))
# What the chart renders from them with the default values (every group of its PrometheusRule,
# DiffusionOperatorDown's included), written by `make manifests` as a plain rule file.
RULES_FILE = ROOT / "manifests" / "prometheus" / "alerts.yaml"
DASHBOARD_FILES = sorted((CHART_DIR / "dashboards").glob("*.json"))
ALERTS_TEST = Path(__file__).parent / "alerts_test.yaml"
# promtool tests of other thresholds, and the chart values that set them.
ALERTS_TUNED_TEST = Path(__file__).parent / "alerts_tuned_test.yaml"
ALERTS_TUNED_VALUES = Path(__file__).parent / "alerts_tuned_values.yaml"
THRESHOLD_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
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


def training_group_names() -> set[str]:
    """The groups of the chart's rule files (the training alerts)."""
    return {
        group["name"]
        for path in RULE_SOURCES
        for group in yaml.safe_load(path.read_text())["groups"]
    }


def load_rule_groups(path: Path = RULES_FILE) -> list[dict[str, Any]]:
    return list(yaml.safe_load(path.read_text())["groups"])


def load_rules() -> list[dict[str, Any]]:
    """Every rule of the training groups (those of the chart's rule files) as the chart renders
    them with the default thresholds (manifests/prometheus/alerts.yaml)."""
    names = training_group_names()
    return [
        rule for group in load_rule_groups() if group["name"] in names for rule in group["rules"]
    ]


def write_rule_file(path: Path, groups: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"groups": groups}))
    return path


def rendered_rule_groups(helm: Path, *args: Any) -> list[dict[str, Any]]:
    """The groups of the chart's PrometheusRule rendered as installed next to the Prometheus
    Operator (release "rel" in "ops"), with the extra helm arguments (values)."""
    result = run_tool(
        helm, "template", "rel", CHART_DIR, "--namespace=ops", f"--kube-version={KUBE_VERSION}",
        f"--api-versions={PROMETHEUS_OPERATOR_API}", *args,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (rule,) = [
        doc for doc in yaml.safe_load_all(result.stdout) if doc and doc["kind"] == "PrometheusRule"
    ]
    return list(rule["spec"]["groups"])


def run_promtool_tests(
    promtool: Path, tests_file: Path, rule_file: Path, workdir: Path
) -> subprocess.CompletedProcess:
    """`promtool test rules` of tests_file with its rule_files pointed at rule_file."""
    tests = yaml.safe_load(tests_file.read_text())
    tests["rule_files"] = [str(rule_file.resolve())]
    copy = workdir / f"{tests_file.stem}-on-{rule_file.stem}.yaml"
    copy.write_text(yaml.safe_dump(tests, sort_keys=False))
    return run_tool(promtool, "test", "rules", copy)


def load_dashboards() -> dict[str, dict[str, Any]]:
    """File name -> dashboard, for the chart's dashboards/*.json."""
    return {path.name: json.loads(path.read_text()) for path in DASHBOARD_FILES}
