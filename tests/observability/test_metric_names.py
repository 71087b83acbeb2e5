"""Every PromQL expression in the dashboards and alert rules reads only metrics that exist: the
project's own (from the code that exports them), DCGM exporter's, kube-state-metrics' or
Prometheus's. A renamed metric or a typo otherwise shows up as an empty panel or a silent alert."""

from __future__ import annotations

import re

import pytest
from observability_files import DOCS, load_dashboards, load_rules
from promql_names import dashboard_exprs, metric_names

# NVIDIA dcgm-exporter (github.com/NVIDIA/dcgm-exporter): the counters of etc/default-counters.csv,
# and the DCGM_FI_PROF_* profiling counters of etc/dcp-metrics-included.csv (on by default in the
# GPU Operator's dcgm-exporter on data-centre GPUs). Labels: gpu, UUID, device, modelName,
# Hostname, and namespace/pod/container of the pod using the GPU.
DCGM_METRICS = frozenset(
    {
        "DCGM_FI_DEV_SM_CLOCK",
        "DCGM_FI_DEV_MEM_CLOCK",
        "DCGM_FI_DEV_MEMORY_TEMP",
        "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_MEM_COPY_UTIL",
        "DCGM_FI_DEV_XID_ERRORS",
        "DCGM_FI_DEV_FB_FREE",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        "DCGM_FI_DEV_ROW_REMAP_FAILURE",
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        "DCGM_FI_PROF_SM_ACTIVE",
        "DCGM_FI_PROF_SM_OCCUPANCY",
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
        "DCGM_FI_PROF_DRAM_ACTIVE",
        "DCGM_FI_PROF_PCIE_TX_BYTES",
        "DCGM_FI_PROF_PCIE_RX_BYTES",
    }
)
# kube-state-metrics (github.com/kubernetes/kube-state-metrics, docs/metrics/workload/), part of
# kube-prometheus-stack.
KUBE_STATE_METRICS = frozenset(
    {
        "kube_deployment_status_replicas_available",
        "kube_deployment_spec_replicas",
        "kube_pod_info",
        "kube_pod_labels",
        "kube_pod_status_phase",
        "kube_pod_status_ready",
        "kube_pod_container_status_restarts_total",
        "kube_pod_container_status_waiting_reason",
        "kube_pod_container_status_terminated_reason",
        "kube_pod_container_resource_requests",
        "kube_job_status_active",
        "kube_job_status_failed",
        "kube_node_status_condition",
    }
)
# Prometheus itself: the health of each scrape target.
PROMETHEUS_METRICS = frozenset({"up", "scrape_duration_seconds"})
EXTERNAL_METRICS = DCGM_METRICS | KUBE_STATE_METRICS | PROMETHEUS_METRICS

# Suffixes of the samples of one metric family in the exposition format.
FAMILY_SUFFIXES = ("_bucket", "_sum", "_count", "_created", "_total")


@pytest.fixture(scope="module")
def project_metrics() -> frozenset[str]:
    """The exposition names (with _total, _bucket, _sum, _count suffixes) that the operator and
    the trainer export, from their code."""
    from diffusion_operator.metrics import metric_names as operator_metric_names
    from diffusion_trainer.metrics import metric_names as trainer_metric_names

    operator_names, trainer_names = operator_metric_names(), trainer_metric_names()
    assert operator_names, "diffusion_operator.metrics.metric_names() is empty"
    assert trainer_names, "diffusion_trainer.metrics.metric_names() is empty"
    assert all(name.startswith("dtj_operator_") for name in operator_names)
    assert all(name.startswith("dtj_trainer_") for name in trainer_names)
    return frozenset(operator_names | trainer_names)


def all_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard query and every rule."""
    exprs = [
        (f"{name}{where}", expr)
        for name, dashboard in load_dashboards().items()
        for where, expr in dashboard_exprs(dashboard)
    ]
    exprs += [
        (f"rule {rule.get('alert') or rule['record']}", rule["expr"]) for rule in load_rules()
    ]
    return exprs


def recorded_names() -> set[str]:
    return {rule["record"] for rule in load_rules() if "record" in rule}


def test_there_are_dashboards_and_rules_to_check():
    exprs = all_exprs()
    assert len(load_dashboards()) >= 2
    assert sum(1 for where, _ in exprs if where.startswith("rule ")) >= 5
    assert len(exprs) >= 50


def test_every_expression_reads_only_metrics_that_exist(project_metrics):
    known = project_metrics | EXTERNAL_METRICS | recorded_names()
    unknown = {
        where: sorted(metric_names(expr) - known)
        for where, expr in all_exprs()
        if metric_names(expr) - known
    }
    assert not unknown, f"metrics nobody exports: {unknown}"


def test_every_expression_reads_some_metric():
    """An expression without a metric is a mistake (or hides it behind a variable)."""
    empty = [where for where, expr in all_exprs() if not metric_names(expr)]
    assert not empty


def family(name: str) -> str:
    for suffix in FAMILY_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def test_every_exported_metric_is_documented(project_metrics):
    """docs/observability.md names every metric family (counters with _total), and nothing that
    is not exported."""
    docs = DOCS.read_text()
    documented = set(re.findall(r"\bdtj_(?:trainer|operator)_[a-z0-9_]+", docs))
    families = {family(name) for name in project_metrics}
    missing = {
        base for base in families if base not in documented and f"{base}_total" not in documented
    }
    assert not missing, f"exported but not in {DOCS.name}: {sorted(missing)}"
    exportable = families | project_metrics
    stale = {name for name in documented if name not in exportable}
    assert not stale, f"in {DOCS.name} but not exported: {sorted(stale)}"


def test_the_dashboards_cover_every_project_metric_family(project_metrics):
    """Each exported family appears on a dashboard or in an alert (or is knowingly left off)."""
    used = {family(name) for _, expr in all_exprs() for name in metric_names(expr)}
    families = {family(name) for name in project_metrics}
    assert not families - used, f"on no dashboard and in no rule: {sorted(families - used)}"
