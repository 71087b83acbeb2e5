"""Rules and dashboards name a DiffusionTrainingJob by dtj_namespace, dtj_job and dtj_attempt, the
labels the operator and the trainer export, never by the target labels a Prometheus sets on every
scraped series (job: the scrape job; namespace, pod, instance: the scraped pod's). So they work
without honorLabels, and the operator's own namespace never stands in for a job's."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from observability_files import load_dashboards, load_rules

TARGET_NAMES = ("namespace", "job", "attempt")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_DTJ_SELECTOR = re.compile(r"\b(dtj_\w+)\s*\{([^{}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_LABEL_VALUES = re.compile(r"label_values\((?P<selector>.*),\s*(?P<label>\w+)\s*\)$", re.S)


def bare_identity_labels(expr: str) -> set[str]:
    """namespace, job or attempt where a dtj_* selector matches on them or a grouping list
    (by, on, ...) names them."""
    found: set[str] = set()
    for match in _DTJ_SELECTOR.finditer(expr):
        matchers = _STRING.sub('""', match.group(2))
        found |= {name for name in _MATCHER.findall(matchers) if name in TARGET_NAMES}
    for match in _LABEL_LIST.finditer(_STRING.sub('""', expr)):
        found |= {name.strip() for name in match.group(1).split(",")} & set(TARGET_NAMES)
    return found


def test_the_check_catches_the_target_labels():
    assert bare_identity_labels('max by (namespace, job) (dtj_trainer_step{attempt="1"})') == {
        "namespace",
        "job",
        "attempt",
    }
    assert bare_identity_labels('a * on (job) dtj_trainer_loss{dtj_job="x"}') == {"job"}
    assert not bare_identity_labels(
        'max by (dtj_namespace, dtj_job) (dtj_trainer_step{dtj_attempt=~"$attempt"})'
    )
    # DCGM and kube-state-metrics label pods by their own namespace and pod: left alone.
    assert not bare_identity_labels('DCGM_FI_DEV_GPU_UTIL{namespace="$namespace", pod=~"x"}')
    assert not bare_identity_labels('label_replace(a, "dtj_namespace", "$1", "namespace", "(.*)")')


@pytest.mark.parametrize("rule", load_rules(), ids=lambda rule: rule.get("alert", "record"))
def test_rules_read_the_job_identity_labels(rule):
    assert not bare_identity_labels(rule["expr"])
    for text in rule.get("annotations", {}).values():
        assert not re.search(r"\$labels\.(?:namespace|job|attempt)\b", text)
    assert re.search(r"\bby \(dtj_namespace, dtj_job\b", rule["expr"])


def dashboard_strings(node: Any) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                yield key, value
            else:
                yield from dashboard_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_strings(item)


@pytest.mark.parametrize("name", sorted(load_dashboards()))
def test_dashboards_read_the_job_identity_labels(name):
    dashboard = load_dashboards()[name]
    strings = list(dashboard_strings(dashboard))
    exprs = [value for key, value in strings if key in ("expr", "query", "definition")]
    assert exprs
    offending = {expr: bare_identity_labels(expr) for expr in exprs if bare_identity_labels(expr)}
    assert not offending
    for key, value in strings:
        if key == "legendFormat":
            assert not re.search(r"\{\{\s*(?:namespace|job|attempt)\s*\}\}", value), value
        if key == "url":
            assert "__data.fields.namespace" not in value
            assert "__data.fields.job" not in value
    for expr in exprs:
        if (match := _LABEL_VALUES.search(expr)) and "dtj_" in match.group("selector"):
            assert match.group("label").startswith("dtj_"), expr
