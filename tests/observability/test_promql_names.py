"""The PromQL metric-name extractor on the constructs the dashboards and rules use, and more."""

from __future__ import annotations

import pytest
from promql_names import PromQLError, dashboard_exprs, metric_names, variable_query_expr


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('dtj_trainer_step{dtj_namespace="a", dtj_job=~"b.*"}', {"dtj_trainer_step"}),
        ("rate(dtj_trainer_samples_total[5m])", {"dtj_trainer_samples_total"}),
        # Strings may hold braces, quotes, commas and `#`.
        ("""x{a="}{#\\"", b!~`[a-z]+`, c='it\\'s'}""", {"x"}),
        ("sum by (phase) (dtj_operator_jobs)", {"dtj_operator_jobs"}),
        ("sum(dtj_operator_jobs) without (phase, instance)", {"dtj_operator_jobs"}),
        (
            "histogram_quantile(0.99, sum by (le) "
            "(rate(dtj_operator_reconcile_duration_seconds_bucket[$__rate_interval])))",
            {"dtj_operator_reconcile_duration_seconds_bucket"},
        ),
        # Label names in grouping lists are not metrics: on, ignoring, group_left/right.
        (
            "a * on (namespace, pod) group_left (node, Hostname) b",
            {"a", "b"},
        ),
        ("a / ignoring(phase) group_right b", {"a", "b"}),
        ("a > bool 1 and on() b unless c or d", {"a", "b", "c", "d"}),
        # Durations, offsets, subqueries, @ modifiers, numbers in every spelling.
        ("max_over_time(deriv(a[10m:30s])[1h30m:1m] offset -5m)", {"a"}),
        ("a @ 1609746000 + b @ start() - c @ end()", {"a", "b", "c"}),
        ("1e3 * a + 0x1F - .5 + 2.5E-3 + Inf - NaN + -inf", {"a"}),
        (
            "time() - max(dtj_trainer_last_checkpoint_timestamp_seconds)",
            {"dtj_trainer_last_checkpoint_timestamp_seconds"},
        ),
        # Grafana variables and macros, anywhere.
        ('topk($topn, rate(a{job="$job", pod=~"${job:regex}-.*"}[${__range}]))', {"a"}),
        ("sum(increase(a[$__range])) / [[scale]]", {"a"}),
        ('label_replace(a, "job", "$1", "pod", "(.+)-a[0-9]+")', {"a"}),
        ('count_values("version", build_info)', {"build_info"}),
        # Recording-rule names have colons; comments are not code.
        ("job:dtj_images:rate5m # the rate of images\n + b", {"job:dtj_images:rate5m", "b"}),
        ("SUM(a) BY (b)", {"a"}),
    ],
)
def test_metric_names_are_what_remains(expr, names):
    assert metric_names(expr) == names


@pytest.mark.parametrize(
    "expr",
    [
        "undefined_function(a)",  # a typo of a function, or a metric called like one
        '{__name__="dtj_trainer_step"}',  # cannot be checked by name
        'a{job="unterminated}',  # the string swallows the brace
        "a[5m",  # an unclosed bracket
    ],
)
def test_what_cannot_be_accounted_for_raises(expr):
    with pytest.raises(PromQLError):
        metric_names(expr)


@pytest.mark.parametrize(
    ("query", "expr"),
    [
        (
            'label_values(dtj_trainer_step{dtj_namespace="$namespace"}, dtj_job)',
            'dtj_trainer_step{dtj_namespace="$namespace"}',
        ),
        ("label_values(job)", None),
        ("label_names()", None),
        ("metrics(dtj_.*)", None),
        ("query_result(topk(5, a))", "topk(5, a)"),
        ("up", "up"),
    ],
)
def test_variable_queries_yield_their_promql(query, expr):
    assert variable_query_expr(query) == expr


def test_dashboard_exprs_finds_targets_rows_annotations_and_variables():
    dashboard = {
        "panels": [
            {"title": "top", "targets": [{"expr": "a"}]},
            {"type": "row", "panels": [{"title": "inner", "targets": [{"expr": "b"}]}]},
        ],
        "annotations": {"list": [{"name": "deploys", "expr": "c"}]},
        "templating": {
            "list": [
                {"name": "ds", "type": "datasource", "query": "prometheus"},
                {"name": "job", "type": "query", "query": {"query": "label_values(d, job)"}},
                {"name": "ns", "type": "query", "query": 'label_values(e{x="1"}, namespace)'},
                {"name": "c", "type": "custom", "query": "1,2,3"},
            ]
        },
    }
    exprs = {expr for _, expr in dashboard_exprs(dashboard)}
    assert exprs == {"a", "b", "c", "d", 'e{x="1"}'}
