"""Launching trainer runs for the tests: child processes (python or torchrun, gloo on CPU)
or in this process (world size 1), and reading back what they left."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testenv.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
STEP_LINE = re.compile(r"step=(\d+)/\d+ loss=([0-9.eE+-]+|nan|inf)")
RUN_TIMEOUT_S = 240


@dataclass
class TrainerRun:
    """What a finished (or killed) trainer run left behind."""

    returncode: int | None
    output: str
    losses: dict[int, float]
    checkpoint_uri: Path
    summary: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def parse_losses(output: str) -> dict[int, float]:
    return {int(m.group(1)): float(m.group(2)) for m in STEP_LINE.finditer(output)}


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"RANK", "WORLD_SIZE", "RESUME_FROM"}}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def run_python_probe(code: str) -> subprocess.CompletedProcess[str]:
    """`python -c code` in the test environment, output captured."""
    return subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
    )


def trainer_command(config_path: Path, nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "diffusion_trainer", "--config", str(config_path)]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-port",
        str(free_port()),
        "-m",
        "diffusion_trainer",
        "--config",
        str(config_path),
    ]


def base_config(data: Path, checkpoint_uri: Path) -> dict[str, Any]:
    """Tiny model, fp32 (exact comparisons), global batch 8 from micro-batches of 4."""
    return {
        "model": {"unet": "tiny", "ema": {"decay": 0.9}},
        "data": {
            "train": {
                "local": str(data),
                "precomputedLatents": True,
                "resolution": 64,
                "captionDropProb": 0.1,
                "numWorkers": 0,
            }
        },
        "training": {
            "globalBatchSize": 8,
            "microBatchSize": 4,
            "maxSteps": 10,
            "lr": 1.0e-3,
            "warmupSteps": 2,
            "precision": "fp32",
            "logIntervalSteps": 1,
            "seed": 7,
        },
        "checkpoint": {"uri": str(checkpoint_uri), "intervalSteps": 4, "keepLast": 1},
        # No metrics server: test runs must not take the port of a real trainer on this host.
        "metrics": {"enabled": False},
    }


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def read_summary(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def list_descendants(pid: int) -> list[int]:
    """All processes below `pid` (torchrun starts its workers in their own sessions, so a
    process-group kill would miss them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, frontier = [], [pid]
    while frontier:
        current = children.get(frontier.pop(), [])
        found.extend(current)
        frontier.extend(current)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started, like a lost node."""
    for victim in [*list_descendants(pid), pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


def send_stop(process: subprocess.Popen[str], stop_signal: int) -> None:
    if stop_signal == signal.SIGKILL:
        kill_tree(process.pid)
    else:
        process.send_signal(stop_signal)


def launch_trainer(
    workdir: Path,
    config: dict[str, Any],
    nproc: int,
    *,
    env: dict[str, str] | None = None,
    stop_after_step: int | None = None,
    stop_signal: int = signal.SIGKILL,
    timeout_s: float = RUN_TIMEOUT_S,
) -> TrainerRun:
    """Run the trainer as a child process; once `stop_after_step` is logged, either SIGKILL
    the whole process tree or send `stop_signal` to the top process (as the kubelet does)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = write_config(workdir / "config.yaml", config)
    termination_log = workdir / "termination-log"
    process = subprocess.Popen(
        trainer_command(config_path, nproc),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO_ROOT,
        env=child_env(DTJ_TERMINATION_LOG=str(termination_log), **(env or {})),
    )
    lines, deadline, signalled = [], time.monotonic() + timeout_s, False
    assert process.stdout is not None
    try:
        for line in process.stdout:
            lines.append(line)
            if time.monotonic() > deadline:
                raise TimeoutError(f"trainer run exceeded {timeout_s} s")
            match = STEP_LINE.search(line)
            if stop_after_step and not signalled and match:
                signalled = int(match.group(1)) >= stop_after_step
                if signalled:
                    send_stop(process, stop_signal)
        returncode = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            kill_tree(process.pid)
            process.wait()
    output = "".join(lines)
    return TrainerRun(
        returncode=returncode,
        output=output,
        losses=parse_losses(output),
        checkpoint_uri=Path(config["checkpoint"]["uri"]),
        summary=read_summary(termination_log),
    )


def run_in_process(
    config: dict[str, Any], env: dict[str, str] | None = None, telemetry: Any = None
) -> TrainerRun:
    """A world-size-1 run inside the test process (same code path, no process start cost)."""
    import torch

    from diffusion_trainer.config import TrainerConfig
    from diffusion_trainer.preemption import StopRequest
    from diffusion_trainer.report import StepReport
    from diffusion_trainer.train import run_training

    reports: list[StepReport] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like the OMP_NUM_THREADS=1 child processes: same arithmetic
    saved_env = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    stop = StopRequest()
    stop.install()
    try:
        summary = run_training(
            TrainerConfig.model_validate(config), stop, [reports.append], telemetry
        )
    finally:
        stop.restore()
        torch.set_num_threads(threads)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return TrainerRun(
        returncode=summary.exit_code,
        output="",
        losses={r.step: r.loss for r in reports},
        checkpoint_uri=Path(config["checkpoint"]["uri"]),
        summary=json.loads(summary.to_json()),
        extra={"reports": reports, "config": config},
    )
