"""Operator metrics: names follow the contract, counters count, job labels never collide."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from diffusion_operator import metrics
from diffusion_operator.failures import Failure
from diffusion_operator.status_types import Incident

# Labels a Prometheus sets on every scraped series itself (the scrape job, the pod's namespace,
# ...): an exported label of the same name would be renamed exported_<name> unless honoured.
TARGET_LABELS = {"job", "namespace", "pod", "instance", "container", "endpoint", "service"}


def scrape() -> dict[tuple[str, tuple], float]:
    text = generate_latest(metrics.REGISTRY).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metric_names_cover_the_contract():
    names = metrics.metric_names()
    assert {
        "dtj_operator_reconcile_duration_seconds_bucket",
        "dtj_operator_jobs",
        "dtj_operator_restarts_total",
        "dtj_operator_worker_pods",
        "dtj_operator_gpu_seconds_total",
        "dtj_operator_api_errors_total",
    } <= names


def test_gpu_seconds_accumulate_between_passes():
    metrics.account_gpu_time("ns", "acct", num_running_pods=2, gpus_per_pod=8, now_s=100.0)
    metrics.account_gpu_time("ns", "acct", num_running_pods=2, gpus_per_pod=8, now_s=110.0)
    key = ("dtj_operator_gpu_seconds_total", (("dtj_job", "acct"), ("dtj_namespace", "ns")))
    assert scrape()[key] == 160.0
    metrics.forget_job_metrics("ns/acct")


def running_pods() -> float:
    return scrape()[("dtj_operator_worker_pods", (("phase", "Running"),))]


def test_jobs_and_pods_by_phase():
    # Other tests in this process may hold pod state of their own jobs: count deltas.
    metrics.record_worker_pods("ns/a", [])
    before = running_pods()
    metrics.record_job_phases(["Running", "Running", None, "Failed"])
    metrics.record_worker_pods("ns/a", ["Running", "Running", "Pending"])
    samples = scrape()
    assert samples[("dtj_operator_jobs", (("phase", "Running"),))] == 2
    assert samples[("dtj_operator_jobs", (("phase", "Pending"),))] == 1
    assert running_pods() == before + 2
    metrics.forget_job_metrics("ns/a")
    assert running_pods() == before


def test_resync_forgets_jobs_deleted_without_an_event():
    metrics.record_worker_pods("ns/live", ["Running"])
    metrics.record_worker_pods("ns/gone", ["Running", "Running"])
    before = running_pods()
    live = {key for key in metrics.tracked_job_keys() if key != "ns/gone"}
    assert metrics.forget_vanished_jobs(live) == {"ns/gone"}
    assert "ns/gone" not in metrics.tracked_job_keys()
    assert "ns/live" in metrics.tracked_job_keys()
    assert running_pods() == before - 2
    metrics.forget_job_metrics("ns/live")


def test_per_job_series_name_the_job_by_labels_no_target_label_collides_with():
    metrics.account_gpu_time("team", "named", num_running_pods=1, gpus_per_pod=1, now_s=0.0)
    metrics.account_gpu_time("team", "named", num_running_pods=1, gpus_per_pod=1, now_s=1.0)
    failure = Failure(failure_class="Error", reason="WorkerFailed", message="exit 1")
    metrics.record_attempt_end("team", "named", failure, "Restart")
    incident = Incident.model_validate(
        {"attempt": 1, "class": "Error", "reason": "WorkerFailed", "lostGpuSeconds": 5.0}
    )
    metrics.record_recovery("team", "named", incident)
    samples = scrape()
    assert not {name for _, labels in samples for name, _ in labels} & TARGET_LABELS
    per_job = {
        name: dict(labels)
        for name, labels in samples
        if ("dtj_job", "named") in labels and not name.endswith("_created")
    }
    assert set(per_job) == {
        "dtj_operator_gpu_seconds_total",
        "dtj_operator_restarts_total",
        "dtj_operator_lost_gpu_seconds_total",
    }
    assert all(labels["dtj_namespace"] == "team" for labels in per_job.values())
    metrics.forget_job_metrics("team/named")
