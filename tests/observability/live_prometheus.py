"""A real Prometheus server for the observability tests: scrape configs generated from the
chart's PodMonitors the way the Prometheus Operator generates them, its HTTP API, and the
dashboards' queries with their variables filled in as Grafana fills them."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testenv.ports import free_port
from testenv.waiting import wait_until

# What the Prometheus Operator enforces with overrideHonorLabels (and its default for a
# PodMonitor without honorLabels): the target labels win, a scraped clash becomes exported_*.
HONOR_LABELS = False
METRICS_PORT_NAME = "metrics"


def sanitize(name: str) -> str:
    """A Kubernetes label name as Prometheus's Kubernetes discovery spells it in __meta_*."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def pod_monitors(rendered: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The PodMonitors of a rendered chart by name."""
    return {o["metadata"]["name"]: o for o in rendered if o and o["kind"] == "PodMonitor"}


def relabel_config(rule: dict[str, Any]) -> dict[str, Any]:
    """One PodMonitor RelabelConfig (camelCase) as Prometheus configuration (snake_case)."""
    names = {
        "sourceLabels": "source_labels",
        "targetLabel": "target_label",
        "regex": "regex",
        "replacement": "replacement",
        "separator": "separator",
        "modulus": "modulus",
        "action": "action",
    }
    unknown = set(rule) - set(names)
    assert not unknown, f"relabeling fields this translation does not know: {unknown}"
    out = {names[key]: value for key, value in rule.items()}
    if "action" in out:
        out["action"] = out["action"].lower()
    return out


def scrape_config(
    monitor: dict[str, Any], interval: str, service_discovery: dict[str, Any]
) -> dict[str, Any]:
    """The scrape job the Prometheus Operator generates for a PodMonitor's first endpoint,
    with the given discovery (kubernetes_sd_configs or static_configs with __meta_* labels)."""
    meta, spec = monitor["metadata"], monitor["spec"]
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["port"] == METRICS_PORT_NAME, endpoint
    relabelings: list[dict[str, Any]] = [
        {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
        {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"],
         "regex": "(Failed|Succeeded)"},
    ]  # fmt: skip
    for key, value in spec["selector"].get("matchLabels", {}).items():
        relabelings.append(
            {
                "action": "keep",
                "source_labels": [
                    f"__meta_kubernetes_pod_label_{sanitize(key)}",
                    f"__meta_kubernetes_pod_labelpresent_{sanitize(key)}",
                ],
                "regex": f"({value});true",
            }
        )
    relabelings += [
        {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"],
         "regex": endpoint["port"]},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"target_label": "job", "replacement": f"{meta['namespace']}/{meta['name']}"},
        {"target_label": "endpoint", "replacement": endpoint["port"]},
        *(relabel_config(rule) for rule in endpoint.get("relabelings", [])),
    ]  # fmt: skip
    return {
        "job_name": f"podMonitor/{meta['namespace']}/{meta['name']}/0",
        "honor_labels": HONOR_LABELS,
        "scrape_interval": interval,
        "scrape_timeout": interval,
        **service_discovery,
        "relabel_configs": relabelings,
        "metric_relabel_configs": [
            relabel_config(rule) for rule in endpoint.get("metricRelabelings", [])
        ],
    }


def static_pod_target(
    address: str, namespace: str, pod: str, labels: dict[str, str], container: str
) -> dict[str, Any]:
    """A static target carrying the __meta_* labels Kubernetes discovery would give a pod
    (for a process that is not a pod: the in-process operator)."""
    meta = {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_container_name": container,
        "__meta_kubernetes_pod_container_port_name": METRICS_PORT_NAME,
    }
    for key, value in labels.items():
        meta[f"__meta_kubernetes_pod_label_{sanitize(key)}"] = value
        meta[f"__meta_kubernetes_pod_labelpresent_{sanitize(key)}"] = "true"
    return {"static_configs": [{"targets": [address], "labels": meta}]}


def pod_discovery(kubeconfig: Path, namespace: str) -> dict[str, Any]:
    return {
        "kubernetes_sd_configs": [
            {
                "role": "pod",
                "kubeconfig_file": str(kubeconfig),
                "namespaces": {"names": [namespace]},
            }
        ]
    }


@dataclass
class Prometheus:
    """A running prometheus process and its HTTP API."""

    process: subprocess.Popen
    url: str
    log_path: Path

    def get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result as a list (a scalar becomes one entry)."""
        try:
            data = self.get("/api/v1/query", query=expr, time=at or time.time())
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{expr}: {error.read().decode(errors='replace')}") from error
        result = data["result"]
        return [{"value": result}] if data["resultType"] in {"scalar", "string"} else result

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[Any]:
        try:
            data = self.get("/api/v1/query_range", query=expr, start=start, end=end, step=step_s)
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{expr}: {error.read().decode(errors='replace')}") from error
        return data["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def log_tail(self, num_lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-num_lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


def start_prometheus(
    binary: Path,
    workdir: Path,
    scrape_configs: list[dict[str, Any]],
    rule_files: list[Path],
    interval: str,
) -> Prometheus:
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": scrape_configs,
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log_path = workdir / "prometheus.log"
    process = subprocess.Popen(
        [
            str(binary),
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=info",
        ],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(process, f"http://127.0.0.1:{port}", log_path)

    def ready() -> bool:
        assert process.poll() is None, f"prometheus exited:\n{server.log_tail()}"
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_until(ready, timeout_s=60, what="prometheus /-/ready", interval_s=0.5)
    except BaseException:
        server.stop()
        raise
    return server


# Grafana's template variables in a query: $name, ${name}, ${name:format}, [[name]].
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]")
LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<selector>.+),)?\s*(?P<label>\w+)\s*\)\s*$")


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's interpolation: a name that is no variable stays as written (as `$1` of a
    label_replace; a misspelt variable then fails the query or finds nothing)."""

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        return values.get(name, match.group(0))

    return VARIABLE.sub(replace, expr)


@dataclass
class Target:
    dashboard: str
    panel: str
    ref_id: str
    expr: str
    instant: bool

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.dashboard, self.panel, self.ref_id)


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def panel_targets(name: str, dashboard: dict[str, Any]) -> list[Target]:
    """Every query target of every panel (rows and collapsed rows' panels included)."""
    return [
        Target(
            name,
            panel.get("title", ""),
            target.get("refId", ""),
            target["expr"],
            bool(target.get("instant")) and not target.get("range"),
        )
        for panel in all_panels(dashboard.get("panels", []))
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


@dataclass
class TimeRange:
    """A dashboard's time range and the built-in variables Grafana derives from it, for a data
    source whose scrape interval is `scrape_interval_s` (its "Scrape interval" setting)."""

    start: float
    end: float
    scrape_interval_s: float
    max_data_points: int = 200
    variables: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        range_s = max(int(self.end - self.start), 1)
        interval_s = max(range_s / self.max_data_points, self.scrape_interval_s)
        rate_interval_s = max(interval_s + self.scrape_interval_s, 4 * self.scrape_interval_s)
        self.variables = {
            "__interval": f"{int(interval_s * 1000)}ms",
            "__interval_ms": str(int(interval_s * 1000)),
            "__rate_interval": f"{int(rate_interval_s * 1000)}ms",
            "__range": f"{range_s}s",
            "__range_s": str(range_s),
            "__range_ms": str(range_s * 1000),
        }

    @property
    def step_s(self) -> float:
        return float(self.variables["__interval_ms"]) / 1000


def resolve_variables(
    prometheus: Prometheus,
    dashboard: dict[str, Any],
    time_range: TimeRange,
    wanted: dict[str, str],
) -> dict[str, str]:
    """Fill the dashboard's template variables as Grafana does on load: each query variable
    from label_values(...) (the /api/v1/label/<label>/values API, matched by its selector) in
    list order, taking the "All" value where that is the variable's default, else `wanted[label]`
    where the label is in `wanted` (which it must offer in any case), else the first value. Fails
    on a variable that offers no value."""
    values = dict(time_range.variables)
    for variable in dashboard.get("templating", {}).get("list", []):
        name, kind = variable["name"], variable["type"]
        if kind == "datasource":
            values[name] = "prometheus"
            continue
        assert kind == "query", f"{name}: variable type {kind} is not handled here"
        query = variable["query"]
        query = query.get("query", "") if isinstance(query, dict) else query
        match = LABEL_VALUES.match(substitute(query, values))
        assert match, f"{name}: {query} is not label_values(...)"
        params: dict[str, Any] = {"start": time_range.start, "end": time_range.end}
        if match["selector"]:
            params["match[]"] = match["selector"].strip()
        options = prometheus.get(f"/api/v1/label/{match['label']}/values", **params)
        assert options, f"variable ${name} ({query}) offers no value"
        label = match["label"]
        if label in wanted:
            assert wanted[label] in options, f"${name} offers {options}, not {wanted[label]}"
        current = (variable.get("current") or {}).get("value")
        if variable.get("includeAll") and current in ("$__all", ["$__all"]):
            values[name] = variable.get("allValue") or "|".join(map(re.escape, options))
        else:
            values[name] = wanted.get(label, options[0])
    return values
