"""The training alert rules: promtool accepts them, fire and stay quiet on synthetic series
(alerts_test.yaml), and each carries what an on-call engineer needs."""

from __future__ import annotations

import re

import pytest
import yaml
from observability_files import ALERTS_TEST, DOCS, RULE_FILES, load_rules, run_tool

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
    assert RULE_FILES
    assert {rule.get("alert") for rule in load_rules()} == ALERTS


def test_promtool_checks_the_rule_files(promtool):
    result = run_tool(promtool, "check", "rules", "--lint=all", "--lint-fatal", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_alert_fires_and_stays_quiet_as_the_promtool_tests_expect(promtool):
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    rule_files = {(ALERTS_TEST.parent / f).resolve() for f in tests["rule_files"]}
    assert rule_files == {path.resolve() for path in RULE_FILES}
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
