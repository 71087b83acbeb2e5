"""Trainer telemetry over HTTP: Prometheus text and the progress JSON."""

from __future__ import annotations

import json
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from diffusion_trainer.config import RunInfo
from diffusion_trainer.metrics import TrainerTelemetry, metric_names
from diffusion_trainer.report import StepReport


def step_report(step: int, loss: float = 0.5) -> StepReport:
    return StepReport(
        step=step,
        max_steps=100,
        loss=loss,
        lr=1e-4,
        images_per_s=64.0,
        mfu=None,
        data_wait_s=0.01,
        optimizer_s=0.04,
        step_time_s=0.25,
        grad_norm=1.5,
        epoch=0,
    )


@pytest.fixture
def telemetry():
    run = RunInfo(job_name="sd", namespace="team", attempt=2)
    served = TrainerTelemetry(run, max_steps=100, global_batch_size=16, world_size=4)
    port = served.serve(0, host="127.0.0.1")
    yield served, port
    served.close()


def fetch(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.read()


def scrape(port: int) -> dict[str, float]:
    samples = {}
    for family in text_string_to_metric_families(fetch(port, "/metrics").decode()):
        for sample in family.samples:
            if sample.labels.get("phase") in (None, "compute"):
                samples[sample.name] = sample.value
    return samples


def test_values_move_with_steps_and_samples_match_steps_times_batch(telemetry):
    served, port = telemetry
    served.on_step(step_report(10))
    first = scrape(port)
    assert first["dtj_trainer_step"] == 10
    assert first["dtj_trainer_samples_total"] == 10 * 16
    assert first["dtj_trainer_images_per_second_per_gpu"] == 16.0
    served.on_step(step_report(20, loss=0.25))
    second = scrape(port)
    assert second["dtj_trainer_step"] == 20
    assert second["dtj_trainer_samples_total"] == 20 * 16
    assert second["dtj_trainer_loss"] == 0.25
    assert 0 < second["dtj_trainer_goodput_ratio"] <= 1


def test_every_series_carries_the_run_labels(telemetry):
    """dtj_namespace, dtj_job and dtj_attempt: no target label a Prometheus sets (job is the
    scrape job, namespace and pod the scraped pod's) has their names."""
    served, port = telemetry
    served.on_step(step_report(5))
    for family in text_string_to_metric_families(fetch(port, "/metrics").decode()):
        for sample in family.samples:
            assert sample.labels["dtj_namespace"] == "team"
            assert sample.labels["dtj_job"] == "sd"
            assert sample.labels["dtj_attempt"] == "2"
            assert not {"job", "namespace", "attempt", "pod", "instance"} & set(sample.labels)


def test_progress_json_reports_step_eta_and_checkpoint(telemetry):
    served, port = telemetry
    served.on_checkpoint_saved(40, "/ckpt/step-00000040", duration_s=1.5)
    served.on_step(step_report(50))
    progress = json.loads(fetch(port, "/progress"))
    assert progress["step"] == 50
    assert progress["totalSteps"] == 100
    assert progress["etaSeconds"] == pytest.approx(50 * 0.25)
    assert progress["checkpoint"]["uri"] == "/ckpt/step-00000040"
    assert scrape(port)["dtj_trainer_last_checkpoint_step"] == 40


def test_nonfinite_loss_is_counted_not_reported(telemetry):
    served, port = telemetry
    served.on_step(step_report(3, loss=float("nan")))
    samples = scrape(port)
    assert samples["dtj_trainer_nonfinite_losses_total"] == 1
    assert "dtj_trainer_loss" not in samples


def test_step_time_splits_into_three_phases(telemetry):
    served, port = telemetry
    served.on_step(step_report(10))
    sums = {
        sample.labels["phase"]: sample.value
        for family in text_string_to_metric_families(fetch(port, "/metrics").decode())
        for sample in family.samples
        if sample.name == "dtj_trainer_step_phase_seconds_sum"
    }
    assert sums == pytest.approx({"data_wait": 0.01, "compute": 0.2, "optimizer": 0.04})


def test_unknown_path_is_404(telemetry):
    _, port = telemetry
    with pytest.raises(urllib.error.HTTPError):
        fetch(port, "/nope")


def test_metric_names_cover_the_contract():
    assert {
        "dtj_trainer_step",
        "dtj_trainer_samples_total",
        "dtj_trainer_step_phase_seconds_bucket",
        "dtj_trainer_goodput_ratio",
        "dtj_trainer_eval_clip_score",
    } <= metric_names()
