"""The Grafana dashboards are importable by kube-prometheus-stack's Grafana sidecar: valid
dashboard JSON of a current schema, a Prometheus data source variable (no `__inputs` to fill in),
stable uids, panels laid out on the grid, and every query bound to the data source variable."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from observability_files import DASHBOARD_FILES, load_dashboards

DASHBOARDS = load_dashboards()
GRID_WIDTH = 24
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Variables Grafana defines itself.
BUILT_IN_VARIABLES = {
    "__rate_interval",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
    "__data",
    "__value",
    "__url_time_range",
    "__field",
    "__series",
    "__all",
}
EXPECTED = {
    "training-job.json": {
        "variables": {"namespace", "job"},
        # What the training-job dashboard must show (issue 5), by the metrics that show it.
        "metrics": {
            "dtj_trainer_images_per_second",
            "dtj_trainer_mfu_ratio",
            "dtj_trainer_loss",
            "dtj_trainer_learning_rate",
            "dtj_trainer_grad_norm",
            "dtj_trainer_step_phase_seconds_sum",
            "dtj_trainer_last_checkpoint_step",
            "dtj_trainer_checkpoint_save_seconds_sum",
            "dtj_operator_restarts_total",
            "dtj_trainer_eval_fid",
            "dtj_trainer_eval_clip_score",
            "dtj_trainer_goodput_ratio",
            "DCGM_FI_DEV_GPU_UTIL",
            "DCGM_FI_DEV_FB_USED",
        },
    },
    "operator-fleet.json": {
        "variables": set(),
        "metrics": {
            "dtj_operator_jobs",
            "dtj_operator_restarts_total",
            "dtj_operator_reconcile_duration_seconds_bucket",
            "dtj_operator_api_errors_total",
            "dtj_operator_gpu_seconds_total",
            "dtj_operator_worker_pods",
        },
    },
}


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def test_the_expected_dashboards_are_there():
    assert {path.name for path in DASHBOARD_FILES} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_is_current_and_self_contained(name):
    dashboard = DASHBOARDS[name]
    assert dashboard["schemaVersion"] >= 39
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"])
    assert dashboard["title"].strip()
    assert dashboard.get("id") is None, "an id ties the dashboard to one Grafana database"
    # Exported-for-sharing dashboards need their inputs filled in; the sidecar cannot.
    assert "__inputs" not in dashboard
    assert "${DS_" not in str(dashboard)
    assert "diffusion-operator" in dashboard["tags"]


def test_uids_and_titles_are_unique():
    assert len({d["uid"] for d in DASHBOARDS.values()}) == len(DASHBOARDS)
    assert len({d["title"] for d in DASHBOARDS.values()}) == len(DASHBOARDS)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_has_a_prometheus_datasource_variable_and_its_variables(name):
    variables = {v["name"]: v for v in DASHBOARDS[name]["templating"]["list"]}
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    assert EXPECTED[name]["variables"] <= set(variables)
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_variable_used_is_defined(name):
    dashboard = DASHBOARDS[name]
    defined = {v["name"] for v in dashboard["templating"]["list"]} | BUILT_IN_VARIABLES
    text = str(dashboard)
    used = set(re.findall(r"\$\{(\w+)", text)) | set(re.findall(r"\$([A-Za-z_]\w*)", text))
    assert not used - defined


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_are_laid_out_on_the_grid_without_overlap(name):
    panels = list(all_panels(DASHBOARDS[name]["panels"]))
    assert len(panels) >= 10
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    occupied: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert all(isinstance(grid[key], int) for key in ("x", "y", "w", "h")), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0
        assert grid["x"] + grid["w"] <= GRID_WIDTH, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in occupied, f"{panel['title']} overlaps {occupied[(x, y)]}"
                occupied[(x, y)] = panel["title"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_query_panel_queries_prometheus_through_the_variable(name):
    for panel in all_panels(DASHBOARDS[name]["panels"]):
        if panel["type"] == "row":
            assert panel["gridPos"]["w"] == GRID_WIDTH
            continue
        assert panel["title"].strip() and panel.get("description", "").strip(), panel["title"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        targets = panel["targets"]
        assert targets, panel["title"]
        ref_ids = [target["refId"] for target in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in targets:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_shows_what_it_is_for(name):
    from promql_names import dashboard_exprs, metric_names

    used = {n for _, expr in dashboard_exprs(DASHBOARDS[name]) for n in metric_names(expr)}
    assert EXPECTED[name]["metrics"] <= used, EXPECTED[name]["metrics"] - used


def test_training_dashboard_selects_one_job_and_joins_dcgm_on_its_pods():
    dashboard = DASHBOARDS["training-job.json"]
    exprs = [
        target["expr"]
        for panel in all_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    trainer = [e for e in exprs if "dtj_trainer_" in e]
    assert all('dtj_job="$job"' in e and 'dtj_namespace="$namespace"' in e for e in trainer)
    dcgm = [e for e in exprs if "DCGM_" in e]
    assert dcgm
    # Worker pods are <job>-a<attempt>-<index>-<suffix>.
    assert all('pod=~"$job-a[0-9]+-[0-9]+-[a-z0-9]+"' in e for e in dcgm)
    assert all('namespace="$namespace"' in e for e in dcgm)
