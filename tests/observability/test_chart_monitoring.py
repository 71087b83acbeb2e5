"""The chart ships the rules and dashboards as they are tested here: a PrometheusRule with every
alert where the Prometheus Operator's API exists, and one sidecar ConfigMap per dashboard."""

from __future__ import annotations

import json
import re
import shutil
from typing import Any

import pytest
import yaml
from observability_files import (
    ALERTS_TEST,
    CHART_DIR,
    DASHBOARD_FILES,
    KUBE_VERSION,
    PROMETHEUS_OPERATOR_API,
    RULE_FILES,
    load_dashboards,
    run_tool,
)
from promql_names import metric_names
from test_alert_rules import ALERTS

OPERATOR_DOWN = "DiffusionOperatorDown"


@pytest.fixture(scope="module")
def rendered(helm) -> list[dict[str, Any]]:
    """The chart as installed next to kube-prometheus-stack (release "rel" in "ops")."""
    result = run_tool(
        helm, "template", "rel", CHART_DIR, "--namespace=ops", f"--kube-version={KUBE_VERSION}",
        f"--api-versions={PROMETHEUS_OPERATOR_API}", "--set=monitoring.labels.release=kps",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def rule_groups(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (rule,) = of_kind(objects, "PrometheusRule")
    return rule["spec"]["groups"]


def test_the_prometheus_rule_holds_every_alert_with_the_release_label(rendered):
    (rule,) = of_kind(rendered, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    alerts = [r["alert"] for group in rule_groups(rendered) for r in group["rules"]]
    assert sorted(alerts) == sorted({*ALERTS, OPERATOR_DOWN})


def test_the_prometheus_rule_embeds_the_rule_files_unchanged(rendered):
    groups = rule_groups(rendered)
    embedded = [g for g in groups if g["name"] != "diffusion-operator"]
    from_files = [g for path in RULE_FILES for g in yaml.safe_load(path.read_text())["groups"]]
    assert embedded == from_files


def test_the_rendered_rules_pass_promtool_and_its_alert_tests(rendered, promtool, tmp_path):
    """The same alert tests against what the chart installs, not only the source file."""
    rules = tmp_path / "rendered-rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule_groups(rendered)}))
    check = run_tool(promtool, "check", "rules", "--lint=all", "--lint-fatal", rules)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    tests["rule_files"] = [rules.name]
    (tmp_path / "alerts_test.yaml").write_text(yaml.safe_dump(tests))
    unit = run_tool(promtool, "test", "rules", tmp_path / "alerts_test.yaml")
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_operator_down_reads_kube_state_metrics_only(rendered):
    (operator_down,) = [
        r for g in rule_groups(rendered) for r in g["rules"] if r.get("alert") == OPERATOR_DOWN
    ]
    assert metric_names(operator_down["expr"]) == {"kube_deployment_status_replicas_available"}


def test_pod_monitors_label_series_with_the_jobs_namespace_job_and_attempt(rendered):
    """Dashboards and alerts select on dtj_namespace, dtj_job and dtj_attempt. No target label
    has those names, so the operator's per-job series keep them without honorLabels (which the
    Prometheus Operator's overrideHonorLabels would undo); the workers' come from their pod."""
    monitors = {m["metadata"]["name"]: m["spec"] for m in of_kind(rendered, "PodMonitor")}
    (operator_endpoint,) = monitors["rel-diffusion-operator"]["podMetricsEndpoints"]
    assert "honorLabels" not in operator_endpoint
    assert not operator_endpoint.get("relabelings")
    assert not operator_endpoint.get("metricRelabelings")
    (worker_endpoint,) = monitors["rel-diffusion-operator-workers"]["podMetricsEndpoints"]
    assert not worker_endpoint.get("honorLabels"), "a worker must not choose its namespace"
    targets = {r["targetLabel"]: r["sourceLabels"] for r in worker_endpoint["relabelings"]}
    assert targets == {
        "dtj_namespace": ["__meta_kubernetes_namespace"],
        "dtj_job": ["__meta_kubernetes_pod_label_diffusion_dev_job_name"],
        "dtj_attempt": ["__meta_kubernetes_pod_label_diffusion_dev_attempt"],
    }
    (drop,) = worker_endpoint["metricRelabelings"]
    assert drop["action"] == "labeldrop"
    for name in ("namespace", "job", "attempt"):
        assert re.fullmatch(drop["regex"], f"exported_dtj_{name}")
    # The target labels stay Prometheus's: neither set nor dropped.
    for name in ("job", "namespace", "pod", "instance", "exported_job", "exported_namespace"):
        assert name not in targets
        assert not re.fullmatch(drop["regex"], name)


def test_every_dashboard_becomes_a_sidecar_config_map(rendered):
    config_maps = [
        cm
        for cm in of_kind(rendered, "ConfigMap")
        if cm["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    shipped = {key: json.loads(value) for cm in config_maps for key, value in cm["data"].items()}
    assert shipped == load_dashboards()
    assert len(config_maps) == len(DASHBOARD_FILES)


def test_a_rule_file_without_groups_fails_the_render(helm, tmp_path):
    chart = tmp_path / "diffusion-operator"
    shutil.copytree(CHART_DIR, chart)
    (chart / "rules" / "broken.yaml").write_text("alert: not-in-a-group\n")
    result = run_tool(
        helm, "template", "rel", chart, f"--kube-version={KUBE_VERSION}",
        f"--api-versions={PROMETHEUS_OPERATOR_API}",
    )  # fmt: skip
    assert result.returncode != 0
    assert "rules/broken.yaml is not a Prometheus rule file" in result.stderr


def test_alerts_are_tuned_through_values_and_still_pass_promtool(helm, promtool, tmp_path):
    tuning = {
        "DiffusionTrainingThroughputDropped": {"for": "30m", "labels": {"severity": "info"}},
        "DiffusionTrainingLossNaN": {"enabled": False},
    }
    result = run_tool(
        helm, "template", "rel", CHART_DIR, "--namespace=ops", f"--kube-version={KUBE_VERSION}",
        f"--api-versions={PROMETHEUS_OPERATOR_API}", "--set=monitoring.rules.labels.team=ml",
        "--set=monitoring.rules.runbookBaseUrl=https://wiki.example/dtj",
        f"--set-json=monitoring.rules.alerts={json.dumps(tuning)}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    groups = rule_groups([doc for doc in yaml.safe_load_all(result.stdout) if doc])
    rules = {r["alert"]: r for g in groups for r in g["rules"]}
    assert "DiffusionTrainingLossNaN" not in rules
    assert sorted(rules) == sorted({*ALERTS, OPERATOR_DOWN} - {"DiffusionTrainingLossNaN"})
    dropped = rules["DiffusionTrainingThroughputDropped"]
    assert (dropped["for"], dropped["labels"]["severity"]) == ("30m", "info")
    assert all(r["labels"]["team"] == "ml" for r in rules.values())
    assert rules[OPERATOR_DOWN]["annotations"]["runbook_url"] == (
        "https://wiki.example/dtj#diffusionoperatordown"
    )
    rule_file = tmp_path / "tuned-rules.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": groups}))
    check = run_tool(promtool, "check", "rules", "--lint=all", "--lint-fatal", rule_file)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_sidecar_label_is_a_value(helm):
    result = run_tool(
        helm, "template", "rel", CHART_DIR, "--namespace=ops", f"--kube-version={KUBE_VERSION}",
        "--set=dashboards.sidecarLabel.key=dashboards.example/grafana",
        "--set=dashboards.sidecarLabel.value=training",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    labels = [
        cm["metadata"]["labels"]
        for cm in yaml.safe_load_all(result.stdout)
        if cm and cm["kind"] == "ConfigMap" and "-dashboard-" in cm["metadata"]["name"]
    ]
    assert len(labels) == len(DASHBOARD_FILES)
    assert all(label["dashboards.example/grafana"] == "training" for label in labels)
    assert not any("grafana_dashboard" in label for label in labels)
