"""A real trainer run serves /metrics over HTTP; the values move as training proceeds."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from trainer_harness import child_env, trainer_command, write_config

from testenv.ports import free_port
from testenv.waiting import wait_until

pytestmark = pytest.mark.slow

GLOBAL_BATCH = 8


def fetch_metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        return response.read().decode()


def phase_seconds(text: str) -> dict[str, float]:
    return {
        sample.labels["phase"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "dtj_trainer_step_phase_seconds_sum"
    }


def scrape(port: int) -> dict[str, float]:
    text = fetch_metrics_text(port)
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "phase" not in sample.labels and "le" not in sample.labels
    }


def test_metrics_of_a_running_trainer_move_with_training(
    tmp_path: Path, make_config: Callable[..., dict[str, Any]]
):
    port = free_port()
    config = make_config(
        tmp_path / "ckpt",
        training={"maxSteps": 100_000, "logIntervalSteps": 1},
        checkpoint={"intervalSteps": 1000},
        metrics={"enabled": True, "port": port},
    )
    command = trainer_command(write_config(tmp_path / "config.yaml", config), nproc=1)
    with (tmp_path / "out.log").open("w") as log:
        process = subprocess.Popen(command, env=child_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        first = wait_until(
            lambda: (s := scrape(port)).get("dtj_trainer_step", 0) >= 2 and s, 180, "step 2"
        )
        later = wait_until(
            lambda: (s := scrape(port))["dtj_trainer_step"] > first["dtj_trainer_step"] and s,
            120,
            "the step to advance",
        )
        phases = phase_seconds(fetch_metrics_text(port))
    finally:
        process.kill()
        process.wait(timeout=30)
    assert set(phases) == {"data_wait", "compute", "optimizer"}
    assert phases["optimizer"] > 0 and phases["compute"] > phases["optimizer"]
    for sample in (first, later):
        assert sample["dtj_trainer_samples_total"] == sample["dtj_trainer_step"] * GLOBAL_BATCH
        assert sample["dtj_trainer_images_per_second"] > 0
        assert sample["dtj_trainer_total_steps"] == 100_000
    assert later["dtj_trainer_samples_total"] > first["dtj_trainer_samples_total"]
