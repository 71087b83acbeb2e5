"""Chaos-tier fixtures: the cluster tier's operator and job helpers, and a checkpoint watcher."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_cluster_fixtures():
    """tests/cluster/conftest.py is not visible from here; reuse its fixtures, not copies."""
    spec = importlib.util.spec_from_file_location(
        "dtj_chaos_cluster_fixtures", ROOT / "tests" / "cluster" / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_cluster = load_cluster_fixtures()
crd = _cluster.crd
run_operator = _cluster.run_operator
operator = _cluster.operator
operator_metrics = _cluster.operator_metrics
dtjs = _cluster.dtjs
job_spec = _cluster.job_spec
