"""The trainer on a CUDA device: a bf16 step, compiled units, and NCCL under torchrun."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from diffusion_trainer.config import TrainerConfig
from diffusion_trainer.preemption import StopRequest
from diffusion_trainer.report import StepReport
from diffusion_trainer.train import run_training
from testenv.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.gpu


def train(config: dict[str, Any]) -> tuple[Any, dict[int, float]]:
    reports: list[StepReport] = []
    summary = run_training(TrainerConfig.model_validate(config), StopRequest(), [reports.append])
    return summary, {report.step: report.loss for report in reports}


def test_bf16_step_trains_on_the_gpu(gpu_config: Callable[..., dict[str, Any]]) -> None:
    summary, losses = train(gpu_config(precision="bf16"))
    assert summary.status == "completed", summary.message
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(loss) for loss in losses.values())
    _, fp32_losses = train(gpu_config(precision="fp32"))
    # Same data and weights: bf16 compute changes the first loss only by rounding.
    assert math.isclose(losses[1], fp32_losses[1], rel_tol=0.05), (losses[1], fp32_losses[1])


def test_compiled_units_match_eager(gpu_config: Callable[..., dict[str, Any]]) -> None:
    _, eager = train(gpu_config(maxSteps=3))
    summary, compiled = train(gpu_config(maxSteps=3, compile=True))
    assert summary.status == "completed", summary.message
    for step, loss in eager.items():
        assert math.isclose(compiled[step], loss, rel_tol=0.03), (step, compiled[step], loss)


def test_one_process_nccl_step_under_torchrun(
    gpu_config: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    config = gpu_config(maxSteps=4)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    termination_log = tmp_path / "termination-log"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "1",
        "--master-port",
        str(free_port()),
        "-m",
        "diffusion_trainer",
        "--config",
        str(config_path),
    ]
    env = {**os.environ, "DTJ_TERMINATION_LOG": str(termination_log)}
    run = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO_ROOT, check=False
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    summary = json.loads(termination_log.read_text())
    assert summary["status"] == "completed"
    assert summary["step"] == 4
    backend_lines = [line for line in output.splitlines() if "process group backend" in line]
    assert backend_lines, output[-2000:]
    assert "world size 1 on cuda:0" in backend_lines[0]
    assert "nccl" in backend_lines[0]
