"""Fault tolerance of the trainer: non-finite steps skipped on the device, rollback resume with
a data skip, the summary's failure class, the loop's activity and the save-delay hook."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from trainer_harness import run_in_process, run_python_probe

from diffusion_trainer.checkpoint import (
    COMMIT_MARKER,
    ROLLBACK_MARKER,
    CheckpointStore,
    resolve_rollback_path,
)
from diffusion_trainer.config import ConfigError, DatasetConfig, RunInfo, TrainerConfig
from diffusion_trainer.data import TrainLoader, advance_position, build_streaming_dataset
from diffusion_trainer.fault_injection import (
    FaultInjection,
    read_fault_injection,
    read_save_delay_s,
)
from diffusion_trainer.metrics import TrainerTelemetry
from diffusion_trainer.optim import ShardLocalAdamW, SkipCounter
from diffusion_trainer.preemption import StopRequest
from diffusion_trainer.report import (
    EXIT_NONFINITE_LOSS,
    TERMINATION_MESSAGE_LIMIT,
    RunSummary,
    StepReport,
)
from diffusion_trainer.resilience import ResilienceSettings, read_resilience_settings
from diffusion_trainer.train import run_training
from diffusion_trainer.watchdog import HangWatchdog

GLOBAL_BATCH = 8


def committed_steps(uri: Path) -> list[int]:
    return CheckpointStore(str(uri)).committed_steps()


def read_train_state(uri: Path, step: int) -> dict[str, Any]:
    return json.loads((uri / f"step-{step:08d}" / "trainer_state.json").read_text())


# --- the optimizer step is skipped on the device ---


def full_copy(tensor: torch.Tensor) -> torch.Tensor:
    full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
    return full.detach().clone()  # full_tensor() of a single shard may be a view


def snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Full copies of the weights and of every optimizer state tensor (moments, steps)."""
    copies = {f"param{i}": full_copy(p.detach()) for i, p in enumerate(model.parameters())}
    for i, state in enumerate(optimizer.state.values()):
        copies.update({f"state{i}.{key}": full_copy(value) for key, value in state.items()})
    return copies


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


def build_sharded_adamw(runtime: Any) -> tuple[torch.nn.Module, ShardLocalAdamW]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.SiLU(), torch.nn.Linear(8, 3))
    fully_shard(model, mesh=runtime.mesh)
    return model, ShardLocalAdamW(model.parameters(), lr=0.1, weight_decay=0.1, fused=True)


def fill_gradients(model: torch.nn.Module, value: float) -> None:
    for param in model.parameters():
        param.grad = torch.full_like(param, value)


def test_a_skipped_step_leaves_weights_moments_and_step_counts_alone(world_of_one: Any) -> None:
    model, optimizer = build_sharded_adamw(world_of_one)
    initial = snapshot(model, optimizer)
    fill_gradients(model, float("nan"))
    optimizer.step(found_inf=torch.ones(()))  # the very first step, skipped
    first = snapshot(model, optimizer)
    assert_unchanged(initial, {k: v for k, v in first.items() if k.startswith("param")})
    assert all(float(v.abs().sum()) == 0 for k, v in first.items() if k.startswith("state"))
    fill_gradients(model, 0.5)
    optimizer.step(found_inf=torch.zeros(()))  # a real step
    trained = snapshot(model, optimizer)
    assert not torch.equal(trained["param0"], initial["param0"])
    assert float(trained["state0.step"]) == 1
    fill_gradients(model, float("inf"))
    optimizer.step(found_inf=torch.ones(()))
    assert_unchanged(trained, snapshot(model, optimizer))


def test_the_skip_counter_tracks_streaks_on_the_device() -> None:
    counter = SkipCounter(torch.device("cpu"))
    for skipped in (0, 1, 1, 0, 1, 1, 1, 0):
        counter.record(torch.tensor(float(skipped)))
    assert counter.read() == (5, 3)
    assert float(counter.streak) == 0


# --- settings and the summary ---


def test_fault_tolerance_settings_come_from_the_environment() -> None:
    assert read_resilience_settings({}) == ResilienceSettings(max_nonfinite_skips=5)
    settings = read_resilience_settings(
        {
            "DTJ_MAX_NONFINITE_SKIPS": "0",
            "DTJ_ROLLBACK_CHECKPOINTS": "2",
            "DTJ_DATA_SKIP_TO_STEP": "40",
            "DTJ_HANG_TIMEOUT_S": "90.5",
        }
    )
    assert settings == ResilienceSettings(0, 2, 40, 90.5)
    assert settings.nonfinite_streak_limit == 1  # 0: the first non-finite step ends the run
    for name, value in [
        ("DTJ_MAX_NONFINITE_SKIPS", "-1"),
        ("DTJ_ROLLBACK_CHECKPOINTS", "0"),
        ("DTJ_DATA_SKIP_TO_STEP", "ten"),
        ("DTJ_HANG_TIMEOUT_S", "0"),
    ]:
        with pytest.raises(ConfigError, match=name):
            read_resilience_settings({name: value})
    faults = read_fault_injection({"DTJ_FAULT_NAN_STEPS": "5-9", "DTJ_FAULT_HANG_AT_STEP": "3:1"})
    assert faults == FaultInjection(nan_steps=(5, 9), hang_at_step=3, hang_rank=1)
    assert [step for step in range(12) if faults.poisons(step)] == [5, 6, 7, 8, 9]
    assert faults.hangs(3, rank=1, world_size=2) and not faults.hangs(3, rank=0, world_size=2)
    assert FaultInjection(hang_at_step=4).hangs(4, rank=1, world_size=2)  # the last rank
    only_first = {"DTJ_FAULT_HANG_AT_STEP": "3", "DTJ_FAULT_SAVE_DELAY_S": "9"}
    only_first["DTJ_FAULT_ATTEMPT"] = "1"
    assert read_fault_injection({**only_first, "DTJ_ATTEMPT": "1"}).hang_at_step == 3
    assert read_fault_injection({**only_first, "DTJ_ATTEMPT": "2"}) == FaultInjection()
    assert read_save_delay_s({**only_first, "DTJ_ATTEMPT": "2"}) == 0.0
    for name, value in [
        ("DTJ_FAULT_NAN_STEPS", "9-5"),
        ("DTJ_FAULT_HANG_AT_STEP", "1"),
        ("DTJ_FAULT_SAVE_DELAY_S", "soon"),
        ("DTJ_FAULT_ATTEMPT", "first"),
    ]:
        with pytest.raises(ConfigError, match=name):
            read_fault_injection({name: value})


def test_the_summary_names_the_failure_class_and_checkpoint_step() -> None:
    summary = RunSummary(
        status="failed",
        exit_code=3,
        step=12,
        max_steps=100,
        final_loss=float("nan"),
        images_per_second=3.5,
        last_checkpoint="/ckpt/step-00000010",
        exported=None,
        message="x" * 10_000,
        failure_class="NonFinite",
        last_checkpoint_step=10,
    )
    text = summary.to_termination_message()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    decoded = json.loads(text)
    assert decoded["failureClass"] == "NonFinite"
    assert decoded["lastCheckpointStep"] == 10
    assert decoded["finalLoss"] is None  # NaN is not JSON
    assert decoded["message"].endswith("...")


# --- rollback and the data skip ---


def make_committed(root: Path, step: int) -> None:
    path = root / f"step-{step:08d}"
    path.mkdir(parents=True)
    (path / COMMIT_MARKER).write_text(json.dumps({"step": step}))


def test_rollback_uncommits_the_newer_checkpoints(tmp_path: Path) -> None:
    for step in (4, 8, 12):
        make_committed(tmp_path, step)
    store = CheckpointStore(str(tmp_path))
    assert resolve_rollback_path(store, 1, attempt=2) == store.path_for(8)
    assert store.committed_steps() == [4, 8]
    marker = json.loads((tmp_path / "step-00000012" / ROLLBACK_MARKER).read_text())
    assert "rolled back to step 8" in marker["reason"]
    # The same attempt started again (suspend and resume) resumes from the newest instead.
    make_committed(tmp_path, 10)
    assert resolve_rollback_path(store, 1, attempt=2) == store.path_for(10)
    assert store.committed_steps() == [4, 8, 10]
    assert resolve_rollback_path(store, 5, attempt=3) == store.path_for(4)  # fewer: the oldest
    assert store.committed_steps() == [4]
    assert resolve_rollback_path(CheckpointStore(str(tmp_path / "none")), 1, attempt=1) is None
    # The new branch overwrites or passes the abandoned saves; then pruning removes them.
    make_committed(tmp_path, 6)
    assert store.prune(keep_last=5) == []
    make_committed(tmp_path, 16)
    assert store.prune(keep_last=5) == [8, 10, 12]


def make_loader(path: Path) -> TrainLoader:
    dataset = build_streaming_dataset(
        DatasetConfig(local=str(path)), micro_batch_size=4, seed=5, tokenizer=None
    )
    return TrainLoader(dataset, 4, num_workers=0, pin_memory=False)


def test_skipping_samples_reaches_the_batch_an_unrolled_loader_reads(synth_dataset: Any) -> None:
    """192 samples, micro-batches of 4: skipping 50 batches crosses into epoch 1."""
    unrolled = make_loader(synth_dataset.latents)
    expected = [unrolled.next_batch() for _ in range(53)][50:]
    del unrolled
    skipping = make_loader(synth_dataset.latents)
    assert skipping.samples_per_epoch(world_size=1) == 192
    position = skipping.skip_samples(50 * 4, world_size=1)
    assert (position["epoch"], position["sample_in_epoch"]) == (1, 8)
    actual = [skipping.next_batch() for _ in range(3)]
    assert [b.sample_ids for b in actual] == [b.sample_ids for b in expected]
    assert [b.epoch for b in actual] == [1, 1, 1]


def test_advance_position_wraps_epochs() -> None:
    state = {"epoch": 2, "sample_in_epoch": 180, "num_canonical_nodes": 1}
    assert advance_position(state, 20, 188) == {
        "epoch": 3,
        "sample_in_epoch": 12,
        "num_canonical_nodes": 1,
    }
    assert advance_position(state, 8, 188)["epoch"] == 3  # exactly the end: the next epoch
    assert advance_position(state, 400, 188) == dict(state, epoch=5, sample_in_epoch=16)


def test_telemetry_serves_the_activity() -> None:
    telemetry = TrainerTelemetry(RunInfo(), max_steps=10, global_batch_size=8, world_size=1)
    assert telemetry.progress()["activity"] == "starting"
    telemetry.set_activity("checkpointing")
    assert telemetry.progress()["activity"] == "checkpointing"


def test_only_time_spent_training_counts_towards_a_hang() -> None:
    watchdog = HangWatchdog(timeout_s=60, rank=0)  # not started: no thread, no exit
    assert watchdog.idle_training_s() is None  # starting
    watchdog.set_activity("training")
    idle_s = watchdog.idle_training_s()
    assert idle_s is not None and 0 <= idle_s < 60
    watchdog.set_activity("checkpointing")
    assert watchdog.idle_training_s() is None
    watchdog.armed_at_s -= 1000  # a long save
    watchdog.set_activity("training")  # re-armed
    idle_s = watchdog.idle_training_s()
    assert idle_s is not None and idle_s < 60
    watchdog.on_step(7)
    assert watchdog.step == 7


def test_sigusr1_dumps_the_stacks_and_the_process_carries_on() -> None:
    probe = (
        "import os, signal\n"
        "from diffusion_trainer.watchdog import install_stack_dump_signal\n"
        "install_stack_dump_signal()\n"
        "os.kill(os.getpid(), signal.SIGUSR1)\n"
        "print('alive')\n"
    )
    result = run_python_probe(probe)
    assert result.stdout.strip() == "alive"
    assert "most recent call first" in result.stderr


# --- whole runs (in this process, world size 1) ---


@pytest.mark.slow
def test_isolated_nonfinite_steps_are_skipped_and_the_run_completes(
    tmp_path: Path, make_config: Callable[..., dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(
        tmp_path / "ckpt",
        training={"maxSteps": 6},
        checkpoint={"intervalSteps": 3, "keepLast": 3, "exportDiffusers": False},
    )
    run = run_in_process(config, env={"DTJ_FAULT_NAN_STEPS": "2-3"})
    assert run.returncode == 0
    reports = run.extra["reports"]
    assert [r.skipped_steps for r in reports] == [0, 1, 1, 0, 0, 0]
    assert math.isnan(run.losses[2]) and math.isfinite(run.losses[4])
    assert "skipped 1 non-finite steps" in caplog.text
    summary = run.summary
    assert summary is not None
    assert summary["status"] == "completed"
    assert summary["failureClass"] is None
    assert summary["lastCheckpointStep"] == 6
    # Isolated skips never touched the weights: step 3 (a skipped step) may be saved.
    assert committed_steps(run.checkpoint_uri) == [3, 6]


@pytest.mark.slow
def test_a_streak_of_nonfinite_steps_ends_the_run_before_the_next_save(
    tmp_path: Path, make_config: Callable[..., dict[str, Any]]
) -> None:
    """Steps 3-8 poisoned, limit 3, checked before the saves at steps 2, 4 and 6: the streak
    reached 3 at step 5, so the save at step 6 never happens."""
    config = make_config(
        tmp_path / "ckpt",
        training={"maxSteps": 10, "logIntervalSteps": 100},
        checkpoint={"intervalSteps": 2, "keepLast": 5, "exportDiffusers": False},
    )
    env = {"DTJ_FAULT_NAN_STEPS": "3-8", "DTJ_MAX_NONFINITE_SKIPS": "3"}
    run = run_in_process(config, env=env)
    assert run.returncode == EXIT_NONFINITE_LOSS
    summary = run.summary
    assert summary is not None
    assert summary["failureClass"] == "NonFinite"
    assert summary["step"] == 6
    assert summary["lastCheckpointStep"] == 4
    assert "at or before step 6: 4 consecutive steps skipped" in summary["message"]
    assert committed_steps(run.checkpoint_uri) == [2, 4]


@pytest.mark.slow
def test_rollback_resumes_an_older_checkpoint_past_the_bad_data(
    tmp_path: Path, make_config: Callable[..., dict[str, Any]]
) -> None:
    """Steps 6-7 read poisoned batches; the rollback to step 4 skips the data to step 7, so
    steps 5 and 6 read the batches of steps 8 and 9 and train normally."""
    uri = tmp_path / "ckpt"
    common = {"checkpoint": {"intervalSteps": 4, "keepLast": 3, "exportDiffusers": False}}
    first = run_in_process(
        make_config(uri, training={"maxSteps": 8}, **common),
        env={"DTJ_FAULT_NAN_STEPS": "6-7"},
    )
    assert first.returncode == 0
    assert sum(r.skipped_steps for r in first.extra["reports"]) == 2
    assert committed_steps(uri) == [4, 8]
    env = {
        "DTJ_FAULT_NAN_STEPS": "6-7",
        "DTJ_ROLLBACK_CHECKPOINTS": "1",
        "DTJ_DATA_SKIP_TO_STEP": "7",
        "RESUME_FROM": str(uri / "step-00000008"),  # ignored when rolling back
    }
    rolled = run_in_process(make_config(uri, training={"maxSteps": 6}, **common), env=env)
    assert rolled.returncode == 0
    assert sorted(rolled.losses) == [5, 6]
    assert all(math.isfinite(loss) for loss in rolled.losses.values())
    assert [r.skipped_steps for r in rolled.extra["reports"]] == [0, 0]
    assert rolled.summary is not None and rolled.summary["lastCheckpointStep"] == 6
    # The abandoned step 8 is an unfinished save that says why; it is newer than 6: kept.
    assert committed_steps(uri) == [4, 6]
    abandoned = uri / "step-00000008"
    assert (abandoned / ROLLBACK_MARKER).is_file() and not (abandoned / COMMIT_MARKER).exists()
    # Step 6 stands where step 9 of the first pass stood; the counter and schedule stay at 6.
    state = read_train_state(uri, 6)
    assert state["dataStepOffset"] == 3
    assert state["data"]["sample_in_epoch"] == 9 * GLOBAL_BATCH
    assert state["lrScheduler"]["last_epoch"] == 6


@pytest.mark.slow
def test_a_delayed_save_still_commits_and_the_activity_follows_the_loop(
    tmp_path: Path,
    make_config: Callable[..., dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    telemetry = TrainerTelemetry(RunInfo(), max_steps=2, global_batch_size=8, world_size=1)
    activities: list[str] = []
    serve_activity = telemetry.set_activity

    def record_activity(activity: str) -> None:
        activities.append(activity)
        serve_activity(activity)

    monkeypatch.setattr(telemetry, "set_activity", record_activity)
    config = make_config(
        tmp_path / "ckpt",
        training={"maxSteps": 2},
        checkpoint={"intervalSteps": 1, "keepLast": 2, "exportDiffusers": False},
    )
    run = run_in_process(config, env={"DTJ_FAULT_SAVE_DELAY_S": "0.2"}, telemetry=telemetry)
    assert run.returncode == 0
    assert "holding the commit of step 2 for 0.2 s" in caplog.text
    assert committed_steps(run.checkpoint_uri) == [1, 2]
    assert run.summary is not None and run.summary["lastCheckpointStep"] == 2
    assert activities == [
        "training",
        "checkpointing",
        "training",
        "checkpointing",
        "training",
        "stopping",
    ]
    assert telemetry.progress()["activity"] == "stopping"
    samples = telemetry.metrics.registry.get_sample_value(
        "dtj_trainer_nonfinite_skipped_steps_total", telemetry.labels
    )
    assert samples == 0


def test_nonfinite_skips_are_counted_by_telemetry() -> None:
    telemetry = TrainerTelemetry(RunInfo(), max_steps=10, global_batch_size=8, world_size=1)
    report = StepReport(2, 10, 0.5, 1e-3, 10.0, None, 0.0, 0.0, 1.0, 0.3, 0, skipped_steps=3)
    telemetry.on_step(report)
    value = telemetry.metrics.registry.get_sample_value(
        "dtj_trainer_nonfinite_skipped_steps_total", telemetry.labels
    )
    assert value == 3


@pytest.mark.slow
def test_an_uncaught_error_reports_where_the_loop_got_to(
    tmp_path: Path, make_config: Callable[..., dict[str, Any]]
) -> None:
    config = make_config(
        tmp_path / "ckpt",
        training={"maxSteps": 3},
        checkpoint={"intervalSteps": 1, "exportDiffusers": False},
    )

    def break_at_step_2(report: StepReport) -> None:
        if report.step == 2:
            raise RuntimeError("sink broke")

    failures: list[RunSummary] = []
    with pytest.raises(RuntimeError, match="sink broke"):
        run_training(
            TrainerConfig.model_validate(config),
            StopRequest(),
            [break_at_step_2],
            on_failure=failures.append,
        )
    (summary,) = failures
    assert summary.failure_class == "Error"
    assert summary.exit_code == 1
    assert (summary.step, summary.last_checkpoint_step) == (2, 1)
    assert summary.message == "RuntimeError: sink broke"
