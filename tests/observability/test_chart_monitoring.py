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
    ALERTS_TUNED_TEST,
    ALERTS_TUNED_VALUES,
    CHART_DIR,
    DASHBOARD_FILES,
    KUBE_VERSION,
    PROMETHEUS_OPERATOR_API,
    RULES_FILE,
    load_dashboards,
    load_rule_groups,
    rendered_rule_groups,
    run_promtool_tests,
    run_tool,
    training_group_names,
    write_rule_file,
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


def test_the_prometheus_rule_holds_the_training_groups_of_the_plain_rule_file(rendered):
    """The plain file (release diffusion-operator) has the same training rules: they name no
    release."""
    training = training_group_names()
    embedded = [g for g in rule_groups(rendered) if g["name"] in training]
    assert [g["name"] for g in rule_groups(rendered)] == [
        "diffusion-operator",
        *sorted(training),
    ]
    assert embedded == [g for g in load_rule_groups(RULES_FILE) if g["name"] in training]


def test_the_rendered_rules_pass_promtool_and_its_alert_tests(rendered, promtool, tmp_path):
    """The same alert tests against what the chart installs, not only the plain file."""
    rules = write_rule_file(tmp_path / "rendered-rules.yaml", rule_groups(rendered))
    check = run_tool(promtool, "check", "rules", "--lint=all", "--lint-fatal", rules)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = run_promtool_tests(promtool, ALERTS_TEST, rules, tmp_path)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def failed_cases(promtool_output: str) -> set[tuple[str, str]]:
    """(alert name, evaluation time) of each failed case in `promtool test rules` output."""
    return set(re.findall(r"alertname: (\w+), time: (\w+),", promtool_output))


def test_tuned_thresholds_fire_and_stay_quiet_where_the_defaults_would_not(
    helm, promtool, tmp_path
):
    """alerts_tuned_test.yaml passes on the chart rendered with alerts_tuned_values.yaml, and
    its cases fail on the default rules (but one, quiet with either): each tuned threshold
    changes when, or with what text, its alert fires."""
    tuned = write_rule_file(
        tmp_path / "tuned-rules.yaml", rendered_rule_groups(helm, f"--values={ALERTS_TUNED_VALUES}")
    )
    check = run_tool(promtool, "check", "rules", "--lint=all", "--lint-fatal", tuned)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = run_promtool_tests(promtool, ALERTS_TUNED_TEST, tuned, tmp_path)
    assert unit.returncode == 0, unit.stdout + unit.stderr

    on_defaults = run_promtool_tests(promtool, ALERTS_TUNED_TEST, RULES_FILE, tmp_path)
    assert on_defaults.returncode != 0
    tests = yaml.safe_load(ALERTS_TUNED_TEST.read_text())
    cases = {
        (case["alertname"], case["eval_time"])
        for group in tests["tests"]
        for case in group["alert_rule_test"]
    }
    assert {alert for alert, _ in cases} == ALERTS
    promtool_times = {"1h7m": "67m"}  # promtool writes hours
    output = on_defaults.stdout + on_defaults.stderr
    failed = {(a, promtool_times.get(t, t)) for a, t in failed_cases(output)}
    quiet_either_way = {("DiffusionTrainingStepStalled", "22m")}
    assert failed == cases - quiet_either_way, output


def test_every_threshold_is_set_in_the_expressions_and_the_texts(helm, promtool, tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "monitoring": {
                    "rules": {
                        "thresholds": {
                            "stepStalledMinutes": 7,
                            "throughputBaselineMinutes": 90,
                            "nonFiniteLossWindowMinutes": 20,
                            "checkpointMaxAgeMinutes": 120,
                            "restartCount": 5,
                            "restartWindowMinutes": 30,
                        }
                    }
                }
            }
        )
    )
    # A ratio with --set reaches the chart as a string: the schema takes its decimal form.
    groups = rendered_rule_groups(
        helm, f"--values={values}", "--set=monitoring.rules.thresholds.throughputDropRatio=0.35"
    )
    rules = {r["alert"]: r for g in groups for r in g["rules"]}

    def stated(alert: str) -> str:
        annotations = rules[alert]["annotations"]
        return annotations["summary"] + " " + annotations["description"]

    expected = {
        "DiffusionTrainingStepStalled": (["[7m]", "offset 7m"], ["for 7 minutes"]),
        "DiffusionTrainingThroughputDropped": (
            ["< 0.35 *", "[90m]"],
            ["0.35 times its 90-minute average", "last 90 minutes, for 10m"],
        ),
        "DiffusionTrainingLossNaN": (["[20m]", "offset 20m"], ["in the last 20 minutes"]),
        "DiffusionTrainingCheckpointStale": (
            ["> 120 * 60", "offset 120m"],
            ["more than 120 minutes", "trained for 120 minutes"],
        ),
        "DiffusionTrainingRestartsBurningBudget": (
            [">= 5", "[30m]", "offset 30m"],
            ["5 or more times in 30 minutes", "in the last 30 minutes"],
        ),
    }
    for alert, (in_expr, in_text) in expected.items():
        for part in in_expr:
            assert part in rules[alert]["expr"], (alert, part)
        for part in in_text:
            assert part in stated(alert), (alert, part)
    # No default is left behind, and Prometheus's own templates reach it untouched.
    for alert in expected:
        seconds = rules[alert]["expr"].replace("* 60", "")  # minutes to seconds, not a default
        assert not re.search(r"\b(15|60|0\.5)\b|\$\{", seconds + stated(alert)), alert
        assert "{{ $labels.dtj_namespace }}/{{ $labels.dtj_job }}" in stated(alert)
    rule_file = write_rule_file(tmp_path / "rules.yaml", groups)
    check = run_tool(promtool, "check", "rules", "--lint=all", "--lint-fatal", rule_file)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("stepStalledMinutes=0", "'/monitoring/rules/thresholds/stepStalledMinutes': minimum"),
        (
            "restartCount=2.5",
            "'/monitoring/rules/thresholds/restartCount': got string, want integer",
        ),
        ("checkpointMaxAgeMinutes=hour", "'/monitoring/rules/thresholds/checkpointMaxAgeMinutes'"),
        ("throughputDropRatio=1.5", "'/monitoring/rules/thresholds/throughputDropRatio'"),
        ("throughputDropRatio=0", "'/monitoring/rules/thresholds/throughputDropRatio'"),
        ("stepStaledMinutes=5", "additional properties 'stepStaledMinutes' not allowed"),
        ("restartWindowMinutes=null", "missing property 'restartWindowMinutes'"),
    ],
)
def test_a_bad_threshold_fails_the_install_naming_the_field(helm, setting, message):
    result = run_tool(
        helm, "template", "rel", CHART_DIR, f"--kube-version={KUBE_VERSION}",
        f"--api-versions={PROMETHEUS_OPERATOR_API}", f"--set=monitoring.rules.thresholds.{setting}",
    )  # fmt: skip
    assert result.returncode != 0, f"{setting} was accepted"
    assert "schema" in result.stderr
    assert message in result.stderr, result.stderr


def test_a_placeholder_without_a_value_fails_the_render(helm, tmp_path):
    chart = tmp_path / "diffusion-operator"
    shutil.copytree(CHART_DIR, chart)
    (chart / "rules" / "extra.yaml").write_text(
        "groups:\n  - name: extra\n    rules:\n      - alert: Extra\n"
        "        expr: up == 0 and changes(up[${upMinutes}m]) > 0\n"
    )
    result = run_tool(
        helm, "template", "rel", chart, f"--kube-version={KUBE_VERSION}",
        f"--api-versions={PROMETHEUS_OPERATOR_API}",
    )  # fmt: skip
    assert result.returncode != 0
    assert (
        "rules/extra.yaml: no value monitoring.rules.thresholds for the placeholder ${upMinutes}"
        in (result.stderr)
    )


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
