"""The training alert rules as the chart renders them with the default thresholds
(manifests/prometheus/alerts.yaml): promtool accepts them, they fire and stay quiet on synthetic
series (alerts_test.yaml), and each carries what an on-call engineer needs. Their sources in the
chart leave every threshold to monitoring.rules.thresholds."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml
from observability_files import (
    ALERTS_TEST,
    CHART_DIR,
    DOCS,
    ROOT,
    RULE_SOURCES,
    RULES_FILE,
    THRESHOLD_PLACEHOLDER,
    load_rules,
    run_tool,
)

ALERTS = {
    "DiffusionTrainingStepStalled",
    "DiffusionTrainingThroughputDropped",
    "DiffusionTrainingLossNaN",
    "DiffusionTrainingCheckpointStale",
    "DiffusionTrainingRestartsBurningBudget",
}
SEVERITIES = {"critical", "warning", "info"}
RUNBOOK_BASE = (
    "https://github.com/diffusion-operator/diffusion-operator/blob/main/docs/observability.md#"
)


def test_the_rule_files_hold_the_training_alerts():
    assert RULE_SOURCES
    assert {rule.get("alert") for rule in load_rules()} == ALERTS


def test_the_plain_rule_file_is_the_charts_rules_with_default_values(helm):
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools/packaging/render_manifests.py"), f"--helm={helm}",
         "--alerts"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == RULES_FILE.read_text(), (
        f"{RULES_FILE.relative_to(ROOT)} is stale: run `make manifests`"
    )


def thresholds() -> dict[str, object]:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    return dict(values["monitoring"]["rules"]["thresholds"])


def test_every_threshold_is_a_value_stated_where_the_rules_use_it():
    """Each placeholder of the rule sources names a value; each value sets an expression and
    appears in the summary or description that states it; no window is hard-coded."""
    rules = [
        rule
        for path in RULE_SOURCES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]
    in_expr = {n for r in rules for n in THRESHOLD_PLACEHOLDER.findall(r["expr"])}
    texts = [r["annotations"].get(k, "") for r in rules for k in ("summary", "description")]
    in_texts = {n for text in texts for n in THRESHOLD_PLACEHOLDER.findall(text)}
    assert in_expr == set(thresholds())
    assert in_texts == set(thresholds()) | {"for"}  # `for`: the rule's, once tuned
    for rule in rules:
        for name in THRESHOLD_PLACEHOLDER.findall(rule["expr"]):
            assert any(
                f"${{{name}}}" in rule["annotations"].get(k, "") for k in ("summary", "description")
            ), f"{rule['alert']} uses {name} without stating it"
        assert not re.search(r"\[\d+[smhdwy]\]|offset \d", rule["expr"]), rule["alert"]


def test_promtool_checks_the_rule_file(promtool):
    result = run_tool(promtool, "check", "rules", "--lint=all", "--lint-fatal", RULES_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_alert_fires_and_stays_quiet_as_the_promtool_tests_expect(promtool):
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    rule_files = {(ALERTS_TEST.parent / f).resolve() for f in tests["rule_files"]}
    assert rule_files == {RULES_FILE.resolve()}
    tested = {
        case["alertname"]
        for group in tests["tests"]
        for case in group["alert_rule_test"]
        if case["exp_alerts"]
    }
    quiet = {
        case["alertname"]
        for group in tests["tests"]
        for case in group["alert_rule_test"]
        if not case["exp_alerts"]
    }
    assert tested == ALERTS, "every alert has a case where it fires"
    assert quiet == ALERTS, "every alert has a case where it stays quiet"
    result = run_tool(promtool, "test", "rules", ALERTS_TEST)
    assert result.returncode == 0, result.stdout + result.stderr


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the Markdown headings: lower case, punctuation dropped, spaces to -."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("rule", load_rules(), ids=lambda rule: rule.get("alert", "record"))
def test_each_alert_has_a_severity_a_summary_a_description_and_a_runbook(rule):
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert "{{ $labels.dtj_namespace }}/{{ $labels.dtj_job }}" in annotations["description"]
    url = annotations["runbook_url"]
    assert url == RUNBOOK_BASE + rule["alert"].lower()
    assert url.removeprefix(RUNBOOK_BASE) in heading_anchors(DOCS.read_text()), (
        f"{DOCS.name} has no section for {rule['alert']}"
    )


@pytest.mark.parametrize("rule", load_rules(), ids=lambda rule: rule.get("alert", "record"))
def test_trainer_alerts_aggregate_per_job_not_per_pod(rule):
    """Each worker pod serves the job's metrics: an alert per pod would page N times."""
    assert re.search(
        r"\b(?:max|sum|count) by \(dtj_namespace, dtj_job(?:, dtj_attempt)?\)", rule["expr"]
    )
