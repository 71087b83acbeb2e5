"""Chaos-tier fixtures: the cluster tier's operator and job helpers."""

from __future__ import annotations

from testenv.fixture_reuse import load_cluster_fixtures

_cluster = load_cluster_fixtures("dtj_chaos_cluster_fixtures")
crd = _cluster.crd
run_operator = _cluster.run_operator
operator = _cluster.operator
operator_metrics = _cluster.operator_metrics
dtjs = _cluster.dtjs
job_spec = _cluster.job_spec
