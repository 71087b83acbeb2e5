"""Progress and evaluations from a real trainer process reach status.progress, status.eval
and `kubectl get dtj`."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from testenv.tiny_trainer import endless_run_config, start_trainer
from testenv.waiting import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

TRAINER_HOST = "127.0.0.1"  # the kwok pod-ip stage points rank 0 here
METRICS_PORT = 9400


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from diffusion_trainer.data_synth import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("synth"), num_samples=64, seed=1)


def read_progress() -> dict | None:
    url = f"http://{TRAINER_HOST}:{METRICS_PORT}/progress"
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.loads(response.read())


@pytest.fixture
def running_trainer(tiny_synth: Any, tmp_path: Path):
    """A real single-process trainer run that keeps training (and evaluating every 3 steps)
    while the test looks at it."""
    config = endless_run_config(
        tiny_synth,
        tmp_path / "ckpt",
        metrics_port=METRICS_PORT,
        eval_interval_steps=3,
        checkpoint_interval_steps=2,
    )
    process = start_trainer(config, tmp_path, {})
    try:
        wait_until(
            lambda: (read_progress() or {}).get("step"), 180, "the trainer's first logged step"
        )
        yield process
    finally:
        process.kill()
        process.wait(timeout=30)


def test_progress_fills_status_and_goes_stale_when_the_trainer_stops(
    dtjs, make_gpu_pool, operator, job_spec, running_trainer, control_plane
):
    pool = make_gpu_pool(num_nodes=1)
    spec = job_spec(pool, nodes=1, podAnnotations={"testenv.diffusion.dev/pod-ip": TRAINER_HOST})
    dtjs.create("watched", spec)
    dtjs.running_pods("watched", attempt=1, count=1)

    def fresh_progress():
        progress = dtjs.status("watched").get("progress") or {}
        return progress if progress.get("step") and not progress.get("stale") else None

    progress = wait_until(fresh_progress, 60, "status.progress from rank 0")
    assert progress["totalSteps"] == 100_000
    assert progress["imagesPerSecond"] > 0
    assert progress["loss"] is not None
    assert progress["eta"]
    first_step = progress["step"]
    wait_until(
        lambda: (dtjs.status("watched").get("progress") or {}).get("step", 0) > first_step,
        60,
        "the step to advance in status",
    )
    # keepLast is 1: the checkpoint status names may be pruned by the time it is read; status
    # follows within a pass or two, and must name a committed one then.
    checkpoint = wait_until(
        lambda: (
            (c := dtjs.status("watched").get("checkpoint")) and Path(c["latestUri"]).is_dir() and c
        ),
        60,
        "status.checkpoint naming a committed checkpoint of rank 0",
    )
    assert checkpoint["step"] >= 2

    evaluation = wait_until(
        lambda: dtjs.status("watched").get("eval"), 120, "status.eval from rank 0's evaluation"
    )
    assert evaluation["step"] % 3 == 0
    assert set(evaluation["fid"]) == set(evaluation["clipScore"]) == {"1.0", "4.0"}
    assert evaluation["numSamples"] == 4
    assert Path(evaluation["grid"]).is_file()

    row = control_plane.kubectl("get", "dtj", "watched", "-n", dtjs.namespace, "--no-headers")
    columns = row.split()
    assert columns[1] == "Running"
    assert int(columns[3]) >= first_step  # STEP
    assert float(columns[4]) > 0  # IMG/S

    running_trainer.kill()
    running_trainer.wait(timeout=30)
    wait_until(
        lambda: (dtjs.status("watched").get("progress") or {}).get("stale"),
        60,
        "progress to be marked stale",
    )
    status = dtjs.status("watched")
    assert status["phase"] == "Running"  # an unreachable endpoint does not harm the job
    assert status["progress"]["step"] >= first_step
