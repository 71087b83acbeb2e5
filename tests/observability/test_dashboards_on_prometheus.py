"""Both dashboards and the alert rules on real data: a real Prometheus scrapes a real operator
reconciling a DiffusionTrainingJob and the real trainer of its worker pod, with the scrape
configs the Prometheus Operator makes of the chart's PodMonitors (honorLabels off, as its
overrideHonorLabels enforces), and every panel query of both dashboards, with the dashboard
variables filled in, returns data, but for the few listed below with the reason they can't.

The cheapest whole system that yields every metric: the operator in this process, its worker pod
on a fake GPU node of the local control plane (kwok, so the operator accounts GPU-seconds), and
a real single-process trainer run (tiny UNet, CPU) on the host, which that pod's IP points at.
Prometheus finds the pod through its real Kubernetes discovery against the local API server."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from live_prometheus import (
    Prometheus,
    Target,
    TimeRange,
    panel_targets,
    pod_discovery,
    pod_monitors,
    resolve_variables,
    scrape_config,
    start_prometheus,
    static_pod_target,
    substitute,
)
from observability_files import (
    CHART_DIR,
    KUBE_VERSION,
    PROMETHEUS_OPERATOR_API,
    load_dashboards,
    run_tool,
    write_rule_file,
)

from testenv.fixture_reuse import load_cluster_fixtures
from testenv.ports import free_port
from testenv.tiny_trainer import endless_run_config, start_trainer
from testenv.waiting import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

_cluster = load_cluster_fixtures("dtj_dashboard_cluster_fixtures")
crd = _cluster.crd
run_operator = _cluster.run_operator
operator = _cluster.operator
dtjs = _cluster.dtjs
job_spec = _cluster.job_spec
OPERATOR_METRICS_PORT = _cluster.OPERATOR_METRICS_PORT

SCRAPE_INTERVAL = "1s"
RELEASE, RELEASE_NAMESPACE = "dtj", "dtj-system"  # where the chart (and its operator) would be
TRAINER_HOST = "127.0.0.1"  # the kwok pod-ip stage points the worker pod here
# The pod's "metrics" port is 9400; the host's trainer takes a free one (another test's trainer
# may hold 9400), which the workers' scrape job puts in the pod's address.
TRAINER_PORT = free_port()
JOB = "watched"

# (dashboard, panel title, refId) -> why it has no data in a healthy run of a CPU trainer
# whose only scrape targets are the operator and the workers. The test fails if one that selects
# this job ($job) has data after all: then the exception is stale.
NO_RESTART = "no attempt ends in a healthy run: dtj_operator_restarts_total has no series yet"
NO_API_ERROR = "no Kubernetes API call fails: dtj_operator_api_errors_total has no series yet"
NO_DCGM = "the DCGM exporter is not scraped here (no GPU: the trainer runs on CPU)"
NO_KSM = "kube-state-metrics is not scraped here"
NO_CUDA = "the trainer runs on CPU: it reports GPU memory only where CUDA is available"
EXCEPTIONS: dict[tuple[str, str, str], str] = {
    ("training-job.json", "Restarts", "A"): NO_RESTART,
    ("training-job.json", "Restarts by reason and action", "A"): NO_RESTART,
    ("training-job.json", "Non-finite losses and skipped steps", "A"): (
        "dtj_trainer_nonfinite_losses_total has a series from the first NaN or infinite loss "
        "(skipped steps, B, count from 0)"
    ),
    ("training-job.json", "Checkpoint save and load time", "B"): (
        "attempt 1 starts from scratch: no checkpoint is loaded"
    ),
    ("training-job.json", "Worker pods by phase", "A"): NO_KSM,
    ("training-job.json", "GPU-seconds lost to failures", "A"): (
        "no failure: dtj_operator_lost_gpu_seconds_total has a series from the first recovery"
    ),
    ("training-job.json", "Time to detect and to recover", "A"): (
        "no failure: dtj_operator_incident_seconds has a series from the first recovery"
    ),
    ("training-job.json", "GPU utilisation", "A"): NO_DCGM,
    ("training-job.json", "Tensor core activity", "A"): NO_DCGM,
    ("training-job.json", "GPU power", "A"): NO_DCGM,
    ("training-job.json", "GPU memory used (DCGM)", "A"): NO_DCGM,
    ("training-job.json", "GPU temperature and Xid", "A"): NO_DCGM,
    ("training-job.json", "GPU temperature and Xid", "B"): NO_DCGM,
    ("training-job.json", "GPU memory (PyTorch)", "A"): NO_CUDA,
    ("training-job.json", "GPU memory (PyTorch)", "B"): NO_CUDA,
    ("operator-fleet.json", "Operator replicas", "A"): NO_KSM,
    ("operator-fleet.json", "Restarts (1h)", "A"): NO_RESTART,
    ("operator-fleet.json", "Restarts by reason (1h)", "A"): NO_RESTART,
    ("operator-fleet.json", "Restarts by job (1h)", "A"): NO_RESTART,
    ("operator-fleet.json", "API errors (1h)", "A"): NO_API_ERROR,
    ("operator-fleet.json", "API errors by operation", "A"): NO_API_ERROR,
    ("operator-fleet.json", "GPU utilisation by job (DCGM)", "A"): NO_DCGM,
}


@pytest.fixture(scope="module")
def prometheus_binary(tool_bin_dir: Path) -> Path:
    path = tool_bin_dir / "prometheus"
    assert path.is_file(), f"{path} is missing: tools/testenv/build.sh builds it"
    return path


@pytest.fixture(scope="module")
def chart_objects(helm) -> list[dict[str, Any]]:
    """The chart as installed next to the Prometheus Operator, with the default values."""
    result = run_tool(
        helm, "template", RELEASE, CHART_DIR, f"--namespace={RELEASE_NAMESPACE}",
        f"--kube-version={KUBE_VERSION}", f"--api-versions={PROMETHEUS_OPERATOR_API}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def chart_rule_groups(chart_objects) -> list[dict[str, Any]]:
    """The groups of the chart's PrometheusRule: DiffusionOperatorDown and the training alerts
    with the default thresholds filled in."""
    (rule,) = [o for o in chart_objects if o["kind"] == "PrometheusRule"]
    return list(rule["spec"]["groups"])


@pytest.fixture(scope="module")
def chart_pod_monitors(chart_objects) -> dict[str, dict[str, Any]]:
    """The chart's PodMonitors as installed next to the Prometheus Operator."""
    monitors = pod_monitors(chart_objects)
    assert len(monitors) == 2, sorted(monitors)
    return monitors


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from diffusion_trainer.data_synth import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("synth"), num_samples=32, seed=2)


@pytest.fixture
def trainer(tiny_synth: Any, namespace: str, tmp_path: Path) -> Iterator[subprocess.Popen]:
    """A real trainer run of the job's attempt 1 (CPU, with checkpoints and evaluations)."""
    config = endless_run_config(
        tiny_synth,
        tmp_path / "ckpt",
        metrics_port=TRAINER_PORT,
        eval_interval_steps=5,
        checkpoint_interval_steps=3,
    )
    config["run"] = {"jobName": JOB, "namespace": namespace, "attempt": 1}
    extra_env = {
        "CUDA_VISIBLE_DEVICES": "",  # CPU everywhere: the exceptions hold on a GPU machine too
        "DTJ_PEAK_TFLOPS": "1",  # a peak for MFU, which a CPU has no table entry for
    }
    process = start_trainer(config, tmp_path, extra_env)
    yield process
    process.kill()
    process.wait(timeout=30)


@pytest.fixture
def prometheus(
    prometheus_binary, chart_pod_monitors, chart_rule_groups, control_plane, namespace, tmp_path
) -> Iterator[Prometheus]:
    """Prometheus scraping the in-process operator (a static target standing for the chart's
    operator pod) and the worker pods of the test's namespace (Kubernetes discovery), each
    with the scrape job the Prometheus Operator makes of the chart's PodMonitor, and evaluating
    the rules of the chart's PrometheusRule."""
    (workers_monitor,) = [m for m in chart_pod_monitors.values() if is_workers(m)]
    (operator_monitor,) = [m for m in chart_pod_monitors.values() if not is_workers(m)]
    operator_target = static_pod_target(
        f"127.0.0.1:{OPERATOR_METRICS_PORT}",
        namespace=RELEASE_NAMESPACE,
        pod=f"{RELEASE}-diffusion-operator-0",
        labels=operator_monitor["spec"]["selector"]["matchLabels"],
        container="operator",
    )
    workers = scrape_config(
        workers_monitor, SCRAPE_INTERVAL, pod_discovery(control_plane.kubeconfig, namespace)
    )
    workers["relabel_configs"].append(
        {
            "source_labels": ["__address__"],
            "regex": r"(.+):\d+",
            "replacement": f"${{1}}:{TRAINER_PORT}",
            "target_label": "__address__",
        }
    )
    server = start_prometheus(
        prometheus_binary,
        tmp_path / "prometheus",
        [scrape_config(operator_monitor, SCRAPE_INTERVAL, operator_target), workers],
        [write_rule_file(tmp_path / "rules.yaml", chart_rule_groups)],
        SCRAPE_INTERVAL,
    )
    yield server
    server.stop()


def is_workers(monitor: dict[str, Any]) -> bool:
    return monitor["spec"]["selector"]["matchLabels"].get("diffusion.dev/role") == "worker"


def has_data(prometheus: Prometheus, target: Target, time_range: TimeRange) -> bool:
    if target.instant:
        return bool(prometheus.query(target.expr, at=time_range.end))
    series = prometheus.query_range(
        target.expr, time_range.start, time_range.end, time_range.step_s
    )
    return any(s["values"] for s in series)


def test_every_dashboard_panel_and_alert_rule_works_on_real_data(
    operator, dtjs, make_gpu_pool, job_spec, namespace, trainer, prometheus, chart_rule_groups
):
    started_s = time.time()
    pool = make_gpu_pool(num_nodes=1)
    dtjs.create(
        JOB,
        job_spec(pool, nodes=1, podAnnotations={"testenv.diffusion.dev/pod-ip": TRAINER_HOST}),
    )
    dtjs.running_pods(JOB, attempt=1, count=1)

    # Data for every panel: steps over several scrapes, a checkpoint, an evaluation, the
    # operator's per-job GPU-seconds. Names only: the labels are what the dashboards test.
    def ready() -> bool:
        assert trainer.poll() is None, "the trainer exited"
        return all(
            prometheus.value(expr)
            for expr in (
                "max(count_over_time(dtj_trainer_step[1m])) >= 10",
                "max(dtj_trainer_last_checkpoint_step) > 0",
                "count(dtj_trainer_eval_fid) > 0",
                "count(dtj_trainer_eval_clip_score) > 0",
                "max(dtj_operator_gpu_seconds_total) > 0",
                "count(dtj_operator_jobs) > 0",
            )
        )

    try:
        wait_until(ready, 240, "the trainer's and the operator's series in Prometheus", 2)
    except AssertionError:
        print(prometheus.log_tail())
        print(Path(trainer.args[-1]).parent.joinpath("trainer.log").read_text()[-3000:])
        raise

    # Every rule the chart installs is loaded and evaluates cleanly.
    expected_groups = {group["name"]: len(group["rules"]) for group in chart_rule_groups}

    def rules_evaluated() -> dict[str, list[dict[str, Any]]] | None:
        groups = {g["name"]: g["rules"] for g in prometheus.get("/api/v1/rules")["groups"]}
        evaluated = all(r["health"] != "unknown" for rules in groups.values() for r in rules)
        return groups if evaluated else None

    groups = wait_until(rules_evaluated, 30, "every rule evaluated once", 1)
    assert {name: len(rules) for name, rules in groups.items()} == expected_groups
    unhealthy = [
        (r["name"], r["health"], r.get("lastError"))
        for rules in groups.values()
        for r in rules
        if r["health"] != "ok"
    ]
    assert not unhealthy

    time_range = TimeRange(started_s, time.time(), scrape_interval_s=1)
    missing, stale = [], []
    for name, dashboard in sorted(load_dashboards().items()):
        variables = resolve_variables(
            prometheus, dashboard, time_range, wanted=job_identity(namespace)
        )
        for target in panel_targets(name, dashboard):
            expanded = Target(
                target.dashboard, target.panel, target.ref_id,
                substitute(target.expr, variables), target.instant,
            )  # fmt: skip
            found = has_data(prometheus, expanded, time_range)
            if not found and target.key not in EXCEPTIONS:
                missing.append(f"{name} / {target.panel} / {target.ref_id}: {expanded.expr}")
            # Fleet-wide queries may hold other jobs' data: the operator's metrics live in this
            # test process, which earlier tests' operators (restarts, API errors) shared.
            if found and target.key in EXCEPTIONS and "$job" in target.expr:
                stale.append(f"{name} / {target.panel} / {target.ref_id}: has data after all")
    unknown = set(EXCEPTIONS) - {
        t.key for name, d in load_dashboards().items() for t in panel_targets(name, d)
    }
    assert not unknown, f"exceptions for targets the dashboards don't have: {sorted(unknown)}"
    assert not missing, "panel queries without data:\n" + "\n".join(missing)
    assert not stale, "exceptions no longer needed:\n" + "\n".join(stale)


def job_identity(namespace: str) -> dict[str, str]:
    """The values the job-identity variables must offer and take, by the label they list."""
    identity = {"namespace": namespace, "job": JOB, "attempt": "1"}
    return {
        **identity,
        **{f"dtj_{label}": value for label, value in identity.items()},
    }
