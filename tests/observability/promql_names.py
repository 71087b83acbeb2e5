"""The metric names a PromQL expression reads: a small extractor for dashboards and rule files.

Not a PromQL parser: it removes everything that is not a metric name (string literals, comments,
Grafana variables, label matchers, range and subquery brackets, grouping label lists, numbers
and durations, function names, keywords) and returns the identifiers that remain. Anything it
cannot account for (an unknown function, a leftover brace or quote, a selector by `__name__`)
raises, so a new construct fails the test instead of passing unchecked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Prometheus 3 PromQL functions (https://prometheus.io/docs/prometheus/latest/querying/functions/),
# including `start`/`end` of the `@` modifier.
FUNCTIONS = _names(
    """
    abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp
    clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year
    days_in_month deg delta deriv double_exponential_smoothing end exp floor histogram_avg
    histogram_count histogram_fraction histogram_quantile histogram_stddev histogram_stdvar
    histogram_sum holt_winters hour idelta increase info irate label_join label_replace
    last_over_time ln log10 log2 mad_over_time max_over_time min_over_time minute month pi
    predict_linear present_over_time quantile_over_time rad rate resets round scalar sgn sin sinh
    sort sort_by_label sort_by_label_desc sort_desc sqrt start stddev_over_time stdvar_over_time
    sum_over_time tan tanh time timestamp vector year
    """
)
AGGREGATIONS = _names(
    """
    avg bottomk count count_values group limit_ratio limitk max min quantile stddev stdvar sum
    topk
    """
)
# Binary and set operators, modifiers, and the number literals Inf and NaN (case-insensitive).
KEYWORDS = _names(
    """
    and atan2 bool by group_left group_right ignoring inf nan offset on or unless without
    """
)

_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|`[^`]*`')
_COMMENT = re.compile(r"#[^\n]*")
# $var, ${var}, ${var:format}, $__rate_interval, [[var]]: a number stands in for them.
_GRAFANA_VARIABLE = re.compile(r"\$\{[^{}]*\}|\$\w+|\[\[[^\[\]]*\]\]")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.I)
_TOKEN = re.compile(
    r"(?P<number>0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)"
    r"|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)"
)
_OPERATOR_CHARS = set("()+-*/%^<>=!,@ \t\r\n")


class PromQLError(ValueError):
    """An expression the extractor cannot account for."""


def metric_names(expr: str) -> set[str]:
    """The metric names that a PromQL expression (possibly with Grafana variables) selects."""
    if "__name__" in expr:
        raise PromQLError(f"selects by __name__, which cannot be checked: {expr!r}")
    text = _STRING.sub(" ", expr)
    if any(quote in text for quote in "\"'`"):
        raise PromQLError(f"unterminated string in {expr!r}")
    text = _COMMENT.sub(" ", text)
    text = _GRAFANA_VARIABLE.sub(" 1 ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    names: set[str] = set()
    leftover: list[str] = []
    position = 0
    for token in _TOKEN.finditer(text):
        leftover.append(text[position : token.start()])
        position = token.end()
        name = token.group("name")
        if name is None:
            continue
        is_call = text[token.end() :].lstrip().startswith("(")
        if is_call:
            if name not in FUNCTIONS and name.lower() not in AGGREGATIONS:
                raise PromQLError(f"unknown function {name!r} in {expr!r}")
        elif name.lower() not in KEYWORDS:
            names.add(name)
    leftover.append(text[position:])
    stray = set("".join(leftover)) - _OPERATOR_CHARS
    if stray:
        raise PromQLError(f"unexpected {''.join(sorted(stray))!r} left in {expr!r}")
    return names


_LABEL_VALUES = re.compile(r"^\s*label_values\s*\((?P<args>.*)\)\s*$", re.S)
_QUERY_RESULT = re.compile(r"^\s*query_result\s*\((?P<expr>.*)\)\s*$", re.S)
_NO_METRIC = re.compile(r"^\s*(?:label_names|metrics)\s*\(.*\)\s*$", re.S)


def variable_query_expr(query: str) -> str | None:
    """The PromQL inside a Grafana Prometheus variable query, or None if it reads no metric:
    label_values(selector, label) -> selector; label_values(label), label_names(), metrics(re)
    -> None; query_result(expr) -> expr; anything else is PromQL itself."""
    if match := _LABEL_VALUES.match(query):
        selector, _, _label = match.group("args").rpartition(",")
        return selector if selector.strip() else None
    if match := _QUERY_RESULT.match(query):
        return match.group("expr")
    if _NO_METRIC.match(query):
        return None
    return query


def dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every query of a Grafana dashboard: panel targets (rows included),
    annotations, and query variables."""

    def walk(node: Any, where: str) -> Iterator[tuple[str, str]]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    yield where, value
                else:
                    label = node.get("title") or node.get("name") or key
                    yield from walk(value, f"{where}/{label}" if key != "templating" else where)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item, where)

    yield from walk({k: v for k, v in dashboard.items() if k != "templating"}, "")
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if isinstance(query, str) and (expr := variable_query_expr(query)) is not None:
            yield f"variable ${variable['name']}", expr
