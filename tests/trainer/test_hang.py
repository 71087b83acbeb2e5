"""The hang watchdog in real trainer processes: a rank that stops making steps dumps its stacks
and exits with code 4, and rank 0 leaves a summary with failureClass Hang."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from trainer_harness import (
    REPO_ROOT,
    RUN_TIMEOUT_S,
    STEP_LINE,
    child_env,
    kill_tree,
    launch_trainer,
    read_summary,
    trainer_command,
    write_config,
)

from diffusion_trainer.report import EXIT_HANG

pytestmark = pytest.mark.slow
# Far above a tiny-model step on a busy CPU: only the injected hang may trip it.
HANG_TIMEOUT_S = "10"


def hang_config(
    make_config: Callable[..., dict[str, Any]], root: Path, interval_steps: int
) -> dict[str, Any]:
    return make_config(
        root / "ckpt",
        training={"maxSteps": 50},
        checkpoint={"intervalSteps": interval_steps, "keepLast": 1, "exportDiffusers": False},
    )


def assert_stacks_dumped(output: str, rank: int) -> None:
    assert f"stacks of rank {rank} follow" in output
    assert "hang: no step for" in output
    assert "most recent call first" in output and 'File "' in output


def test_a_hung_rank_dumps_its_stacks_and_exits_4(
    tmp_path: Path, make_config: Callable[..., dict[str, Any]]
) -> None:
    """One process that hangs before step 5: its own watchdog shows where it is stuck."""
    env = {"DTJ_FAULT_HANG_AT_STEP": "5", "DTJ_HANG_TIMEOUT_S": HANG_TIMEOUT_S}
    config = hang_config(make_config, tmp_path, interval_steps=2)
    run = launch_trainer(tmp_path, config, nproc=1, env=env)
    assert run.returncode == EXIT_HANG, run.output[-3000:]
    assert_stacks_dumped(run.output, rank=0)
    assert "hang_for_fault_tests" in run.output  # the stuck frame is in the dump
    assert run.summary is not None
    assert run.summary["failureClass"] == "Hang"
    assert run.summary["exitCode"] == EXIT_HANG
    assert run.summary["step"] == 4
    assert run.summary["lastCheckpointStep"] == 4  # checkpointing never counted as a hang


def worker_pid(torchrun_pid: int, rank: int) -> int | None:
    """The torchrun worker process (a direct child) of global rank `rank`."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
            if parent == torchrun_pid and f"RANK={rank}".encode() in environ:
                return int(stat.parent.name)
    return None


def test_the_other_rank_exits_4_when_a_peer_is_frozen(
    tmp_path: Path, make_config: Callable[..., dict[str, Any]]
) -> None:
    """2 processes; rank 1 is frozen with SIGSTOP (its watchdog cannot run) once step 2 is
    logged. Rank 0 waits in a collective for it, and its watchdog ends the run. No periodic
    saves: time in a save never counts as a hang (the collective timeout covers those)."""
    config = hang_config(make_config, tmp_path, interval_steps=1000)
    config_path = write_config(tmp_path / "config.yaml", config)
    termination_log = tmp_path / "termination-log"
    env = child_env(DTJ_TERMINATION_LOG=str(termination_log), DTJ_HANG_TIMEOUT_S=HANG_TIMEOUT_S)
    process = subprocess.Popen(
        trainer_command(config_path, nproc=2),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )
    lines: list[str] = []
    frozen: int | None = None
    assert process.stdout is not None
    deadline = threading.Timer(RUN_TIMEOUT_S, kill_tree, [process.pid])
    deadline.start()
    try:
        for line in process.stdout:
            lines.append(line)
            step = STEP_LINE.search(line)
            if frozen is None and step and int(step.group(1)) >= 2:
                frozen = worker_pid(process.pid, rank=1)
                assert frozen is not None, "no rank-1 worker found"
                os.kill(frozen, signal.SIGSTOP)
            if frozen is not None and "stacks of rank 0 follow" in line:
                os.kill(frozen, signal.SIGKILL)  # else torchrun waits 30 s to kill it
        process.wait(timeout=60)
    finally:
        deadline.cancel()
        kill_tree(process.pid)
        process.wait()
    output = "".join(lines)
    assert frozen is not None, output[-3000:]
    assert process.returncode != 0
    assert_stacks_dumped(output, rank=0)
    summary = read_summary(termination_log)
    assert summary is not None, output[-3000:]
    assert summary["failureClass"] == "Hang"
    assert summary["exitCode"] == EXIT_HANG
    assert summary["step"] >= 2


def test_a_run_with_the_watchdog_and_loader_workers_exits_when_done(
    tmp_path: Path, make_config: Callable[..., dict[str, Any]]
) -> None:
    """The watchdog must let go of the loop: persistent loader workers kept alive by it made
    the finished process hang at exit."""
    config = make_config(
        tmp_path / "ckpt",
        training={"maxSteps": 3},
        checkpoint={"intervalSteps": 3, "exportDiffusers": False},
    )
    config["data"]["train"]["numWorkers"] = 1
    run = launch_trainer(
        tmp_path, config, nproc=2, env={"DTJ_HANG_TIMEOUT_S": "600"}, timeout_s=240
    )
    assert run.returncode == 0, run.output[-3000:]
    assert run.summary is not None and run.summary["status"] == "completed"
