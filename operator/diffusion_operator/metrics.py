"""Operator metrics (prometheus-client), served on DTJ_OPERATOR_METRICS_PORT.

Per-job series name their DiffusionTrainingJob with `dtj_namespace` and `dtj_job`, never
`namespace` and `job`: those are target labels a Prometheus sets on every scraped series (the
scrape job, the operator pod's namespace), so the job's own labels must not collide with them.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from diffusion_trainer.metrics import exposition_names

if TYPE_CHECKING:
    from diffusion_operator.failures import Failure
    from diffusion_operator.status_types import Incident

REGISTRY = CollectorRegistry(auto_describe=True)
JOB_LABELS = ("dtj_namespace", "dtj_job")

RECONCILE_DURATION = Histogram(
    "dtj_operator_reconcile_duration_seconds",
    "Duration of one reconcile pass of one job.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
JOBS = Gauge("dtj_operator_jobs", "DiffusionTrainingJobs by phase.", ["phase"], registry=REGISTRY)
RESTARTS = Counter(
    "dtj_operator_restarts",
    "Ends of attempts, by reason, failure class and the action taken (Restart, "
    "RestartNotCounted, Rollback, Fail).",
    [*JOB_LABELS, "reason", "class", "action"],
    registry=REGISTRY,
)
INCIDENT_SECONDS = Histogram(
    "dtj_operator_incident_seconds",
    "Time to detect a failure (from when it happened) and to recover from it (from detection "
    "to the next attempt's workers all running), by failure class.",
    ["stage", "class"],
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600),
    registry=REGISTRY,
)
LOST_GPU_SECONDS = Counter(
    "dtj_operator_lost_gpu_seconds",
    "GPU-seconds lost to failures: work since the last committed checkpoint, redone, plus "
    "the wait for the next attempt's workers.",
    JOB_LABELS,
    registry=REGISTRY,
)
WORKER_PODS = Gauge(
    "dtj_operator_worker_pods", "Worker pods of all jobs, by phase.", ["phase"], registry=REGISTRY
)
GPU_SECONDS = Counter(
    "dtj_operator_gpu_seconds",
    "GPU-seconds allocated to a job's running worker pods.",
    JOB_LABELS,
    registry=REGISTRY,
)
LEADER = Gauge(
    "dtj_operator_leader", "1 while this replica holds the lease and acts.", registry=REGISTRY
)
QUEUE_DEPTH = Gauge(
    "dtj_operator_queue_depth", "Jobs due for a pass and not yet taken.", registry=REGISTRY
)
API_ERRORS = Counter(
    "dtj_operator_api_errors",
    "Kubernetes API calls that failed, by operation.",
    ["operation"],
    registry=REGISTRY,
)

POD_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
_pods_by_job: dict[str, Tally[str]] = {}
_pods_lock = threading.Lock()
_server_started = False
_gpu_seen_s: dict[str, float] = {}


def account_gpu_time(
    namespace: str, job: str, num_running_pods: int, gpus_per_pod: int, now_s: float
) -> None:
    """Add the GPU-seconds allocated since the previous pass over this job."""
    key = f"{namespace}/{job}"
    last_s = _gpu_seen_s.get(key)
    _gpu_seen_s[key] = now_s
    if last_s is not None and num_running_pods and gpus_per_pod:
        elapsed_s = max(now_s - last_s, 0.0)
        GPU_SECONDS.labels(dtj_namespace=namespace, dtj_job=job).inc(
            elapsed_s * num_running_pods * gpus_per_pod
        )


def record_attempt_end(
    namespace: str, job: str, failure: Failure | None, action: str | None
) -> None:
    if failure is None or action is None:
        return
    labels = {"dtj_namespace": namespace, "dtj_job": job}
    RESTARTS.labels(
        **labels, reason=failure.reason, action=action, **{"class": failure.failure_class}
    ).inc()


def record_recovery(namespace: str, job: str, incident: Incident | None) -> None:
    """An incident is over (the next attempt runs): its times and the GPU-seconds it cost."""
    if incident is None:
        return
    klass = {"class": incident.failure_class}
    INCIDENT_SECONDS.labels(stage="detect", **klass).observe(incident.detect_seconds or 0.0)
    INCIDENT_SECONDS.labels(stage="recover", **klass).observe(incident.recover_seconds or 0.0)
    LOST_GPU_SECONDS.labels(dtj_namespace=namespace, dtj_job=job).inc(
        incident.lost_gpu_seconds or 0.0
    )


def metric_names() -> set[str]:
    """Every sample name the operator can expose."""
    return exposition_names(REGISTRY)


def record_worker_pods(job_key: str, phases: list[str]) -> None:
    with _pods_lock:
        _pods_by_job[job_key] = Tally(phases)
        _publish_pods()


def forget_job_metrics(job_key: str) -> None:
    _gpu_seen_s.pop(job_key, None)
    with _pods_lock:
        _pods_by_job.pop(job_key, None)
        _publish_pods()


def forget_vanished_jobs(live_keys: set[str]) -> set[str]:
    """Drop the metric state of jobs that no longer exist; returns their keys."""
    vanished = tracked_job_keys() - live_keys
    for key in vanished:
        forget_job_metrics(key)
    return vanished


def tracked_job_keys() -> set[str]:
    """Jobs that currently hold per-job metric state."""
    with _pods_lock:
        return set(_pods_by_job) | set(_gpu_seen_s)


def _publish_pods() -> None:
    totals: Tally[str] = Tally()
    for tally in _pods_by_job.values():
        totals.update(tally)
    for phase in POD_PHASES:
        WORKER_PODS.labels(phase=phase).set(totals.get(phase, 0))


def record_job_phases(phases: list[str | None]) -> None:
    tally = Tally(phase or "Pending" for phase in phases)
    for phase in ("Pending", "Running", "Restarting", "Suspended", "Succeeded", "Failed"):
        JOBS.labels(phase=phase).set(tally.get(phase, 0))


def serve(port: int) -> None:
    """Start the exposition server once per process (port 0 disables it)."""
    global _server_started  # noqa: PLW0603 - one server per process
    if port and not _server_started:
        start_http_server(port, registry=REGISTRY)
        _server_started = True
