"""End-to-end training runs: loss falls, FSDP world-size equivalence, crash/resume, SIGTERM."""

from __future__ import annotations

import json
import math
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from trainer_harness import TrainerRun, base_config, launch_trainer, run_in_process

from diffusion_trainer.checkpoint import CheckpointStore
from diffusion_trainer.data import latent_columns
from diffusion_trainer.report import EXIT_NONFINITE_LOSS

pytestmark = pytest.mark.slow
LOSS_RTOL = 1e-4


def committed_steps(uri: Path) -> list[int]:
    return sorted(int(p.parent.name.split("-")[1]) for p in uri.glob("step-*/.committed"))


def assert_losses_match(actual: dict[int, float], expected: dict[int, float]) -> None:
    assert actual, "no losses to compare"
    for step, loss in actual.items():
        assert math.isclose(loss, expected[step], rel_tol=LOSS_RTOL), (step, loss, expected[step])


def test_reference_run_completes_and_reports(reference_run: TrainerRun) -> None:
    assert reference_run.returncode == 0
    assert sorted(reference_run.losses) == list(range(1, 11))
    summary = reference_run.summary
    assert summary is not None
    assert summary["status"] == "completed"
    assert summary["exitCode"] == 0
    assert summary["step"] == 10
    assert summary["lastCheckpoint"].endswith("step-00000010")
    assert summary["lastCheckpointStep"] == 10
    assert summary["failureClass"] is None
    assert summary["imagesPerSecond"] > 0
    reports = reference_run.extra["reports"]
    assert all(r.mfu is None for r in reports)  # no known peak on CPU: n/a, not a guess
    assert reports[0].lr == pytest.approx(0.5e-3)  # warmup: step 1 of 2
    assert reports[-1].lr == pytest.approx(1e-3)


def test_loss_falls_on_synthetic_shapes(
    tmp_path: Path, make_config: Callable[..., dict[str, Any]]
) -> None:
    config = make_config(
        tmp_path / "ckpt",
        training={"maxSteps": 30, "microBatchSize": 8, "lr": 2e-3, "logIntervalSteps": 1},
        checkpoint={"intervalSteps": 1000, "exportDiffusers": False},
        model={"ema": None},
    )
    run = run_in_process(config, env={"DTJ_PEAK_TFLOPS": "1"})
    losses = [run.losses[step] for step in sorted(run.losses)]
    assert len(losses) == 30
    # With a peak to compare against, FLOPs are counted and MFU is reported.
    assert all(report.mfu is not None and report.mfu > 0 for report in run.extra["reports"])
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    assert run.extra["reports"][-1].epoch == 1  # 240 samples drawn from 192: a second epoch


def write_corrupt_copy(source: Path, out: Path) -> Path:
    """The dataset with NaN latents everywhere, as a corrupt shard would give."""
    import numpy as np
    from streaming import LocalDataset, MDSWriter

    dataset = LocalDataset(str(source))
    first = dataset[0]
    columns = latent_columns(first["latents"].shape, first["text_hidden"].shape)
    with MDSWriter(out=str(out), columns=columns) as writer:
        for index in range(len(dataset)):
            sample = dict(dataset[index])
            sample["latents"] = np.full_like(sample["latents"], np.nan)
            writer.write(sample)
    return out


def test_nonfinite_gradients_never_reach_a_committed_checkpoint(
    tmp_path: Path, make_config: Callable[..., dict[str, Any]], synth_dataset: Any
) -> None:
    corrupt = write_corrupt_copy(synth_dataset.latents, tmp_path / "corrupt")
    config = make_config(
        tmp_path / "ckpt",
        data={"train": {"local": str(corrupt)}},
        training={"maxSteps": 4, "logIntervalSteps": 100},
        checkpoint={"intervalSteps": 1, "exportDiffusers": False},
    )
    # 0: the first non-finite gradient ends the run (the old behaviour).
    run = run_in_process(config, env={"DTJ_MAX_NONFINITE_SKIPS": "0"})
    assert run.returncode == EXIT_NONFINITE_LOSS
    assert run.summary is not None
    assert "non-finite gradient norm at or before step 1" in run.summary["message"]
    assert run.summary["failureClass"] == "NonFinite"
    assert run.summary["lastCheckpointStep"] is None
    assert CheckpointStore(str(run.checkpoint_uri)).committed_steps() == []


def test_two_processes_match_one_process(
    reference_run: TrainerRun, stopped_two_process_run: TrainerRun
) -> None:
    """Same global batch: 2 processes x 1 micro-batch of 4 vs 1 process x 2 accumulated."""
    two = stopped_two_process_run
    assert max(two.losses) >= 5, two.output[-3000:]
    assert_losses_match(two.losses, reference_run.losses)


@pytest.mark.slow
def test_accumulating_across_processes_matches_one_process(
    tmp_path: Path, make_config: Callable[..., dict[str, Any]], reference_run: TrainerRun
) -> None:
    """2 processes x 2 accumulated micro-batches of 2, gradients reduced once per step."""
    config = make_config(
        tmp_path / "ckpt",
        training={"microBatchSize": 2, "maxSteps": 4},
        data={"train": {"numWorkers": 1}},
    )
    run = launch_trainer(tmp_path, config, nproc=2)
    assert run.returncode == 0, run.output[-3000:]
    assert sorted(run.losses) == [1, 2, 3, 4]
    assert_losses_match(run.losses, reference_run.losses)


def test_hsdp_replicas_match_one_process_and_resume_under_fsdp(
    tmp_path: Path, make_config: Callable[..., dict[str, Any]], reference_run: TrainerRun
) -> None:
    """HSDP with 2 replicas of 1 shard each (gradients all-reduced across the replicas, the
    norm summed over the shard group only) computes the reference's steps; its checkpoint
    resumes in one FSDP process, which goes on with the reference's losses."""
    uri = tmp_path / "ckpt"
    hsdp = make_config(
        uri,
        training={"microBatchSize": 4, "maxSteps": 4, "sharding": "hsdp", "hsdpShardSize": 1},
    )
    run = launch_trainer(tmp_path / "hsdp", hsdp, nproc=2)
    assert run.returncode == 0, run.output[-3000:]
    assert sorted(run.losses) == [1, 2, 3, 4]
    assert_losses_match(run.losses, reference_run.losses)
    resumed = run_in_process(make_config(uri, training={"maxSteps": 6}))
    assert resumed.returncode == 0
    assert sorted(resumed.losses) == [5, 6]
    assert_losses_match(resumed.losses, reference_run.losses)


def test_coarse_units_resharding_every_forward_match_the_default_sharding(
    tmp_path: Path, make_config: Callable[..., dict[str, Any]], reference_run: TrainerRun
) -> None:
    """The reference runs the defaults (a unit per ResNet/transformer layer, weights kept
    gathered through the 2 accumulated micro-batches); a unit per block, gathered again for
    every forward and backward, computes the same steps."""
    config = make_config(
        tmp_path / "ckpt",
        training={"fsdpUnits": "blocks", "reshardAfterForward": True, "maxSteps": 4},
    )
    run = run_in_process(config)
    assert run.returncode == 0
    assert sorted(run.losses) == [1, 2, 3, 4]
    assert_losses_match(run.losses, reference_run.losses)


def test_sigterm_writes_final_checkpoint_and_fails_the_pod(
    stopped_two_process_run: TrainerRun,
) -> None:
    run = stopped_two_process_run
    assert run.returncode not in (0, None)  # torchrun reports the stop as a failure
    summary = run.summary
    assert summary is not None, run.output[-3000:]
    assert summary["status"] == "preempted"
    assert summary["exitCode"] == 143
    assert summary["failureClass"] is None
    stopped_at = summary["step"]
    assert 5 <= stopped_at < 10
    assert max(run.losses) == stopped_at  # it finished the step it was in, then stopped
    # The final checkpoint is off the 4-step interval; keepLast 1 pruned step 4.
    assert committed_steps(run.checkpoint_uri) == [stopped_at]
    assert summary["lastCheckpointStep"] == stopped_at
    state_file = run.checkpoint_uri / f"step-{stopped_at:08d}" / "trainer_state.json"
    assert json.loads(state_file.read_text())["worldSize"] == 2


def test_resume_after_kill_matches_uninterrupted(
    reference_run: TrainerRun, killed_one_process_run: TrainerRun
) -> None:
    """SIGKILL mid-run, then a new run on the same checkpoint.uri picks the latest committed
    checkpoint and reproduces the uninterrupted run's next losses."""
    killed = killed_one_process_run
    assert killed.returncode == -signal.SIGKILL
    assert max(killed.losses) < 10  # killed before the end
    committed = committed_steps(killed.checkpoint_uri)
    assert committed in ([4], [8])  # the periodic checkpoint(s) before the kill, keepLast 1
    config = dict(
        reference_run.extra["config"],
        checkpoint={
            "uri": str(killed.checkpoint_uri),
            "intervalSteps": 4,
            "keepLast": 1,
        },
    )
    resumed = run_in_process(config)
    assert resumed.returncode == 0
    assert sorted(resumed.losses) == list(range(committed[0] + 1, 11))
    assert_losses_match(resumed.losses, reference_run.losses)


def test_two_process_checkpoint_resumes_at_one_process(
    tmp_path: Path, reference_run: TrainerRun, stopped_two_process_run: TrainerRun
) -> None:
    """World size 2 -> 1 through RESUME_FROM: model, optimizer, EMA and data position
    reshard, and the losses continue exactly as in the uninterrupted 1-process run."""
    stopped_at = stopped_two_process_run.summary["step"]  # type: ignore[index]
    source = stopped_two_process_run.checkpoint_uri / f"step-{stopped_at:08d}"
    config = dict(
        reference_run.extra["config"],
        checkpoint={
            "uri": str(tmp_path / "ckpt"),
            "intervalSteps": 100,
            "exportDiffusers": False,
        },
    )
    resumed = run_in_process(config, env={"RESUME_FROM": str(source)})
    assert resumed.returncode == 0
    assert sorted(resumed.losses) == list(range(stopped_at + 1, 11))
    assert_losses_match(resumed.losses, reference_run.losses)


def test_checkpoints_are_committed_and_pruned(reference_run: TrainerRun) -> None:
    uri = reference_run.checkpoint_uri
    assert committed_steps(uri) == [10]  # interval 4, keepLast 1: steps 4 and 8 were pruned
    assert not (uri / "step-00000004").exists()
    latest = uri / "step-00000010"
    state = json.loads((latest / "trainer_state.json").read_text())
    assert state["step"] == 10
    assert state["worldSize"] == 1
    assert state["hasEma"] is True
    assert state["data"]["sample_in_epoch"] == 80
    assert state["lrScheduler"]["last_epoch"] == 10
    assert (latest / ".metadata").is_file()
    marker = json.loads((latest / ".committed").read_text())
    assert marker["step"] == 10


def test_online_encoding_matches_precomputed_latents(
    tmp_path: Path, synth_dataset: Any, make_config: Callable[..., dict[str, Any]]
) -> None:
    """The raw path (VAE + text encoder on the fly) reproduces the precomputed path's losses:
    both scale the raw VAE latents exactly once."""
    encoders = str(synth_dataset.encoders)
    common = {
        "training": {"maxSteps": 2},
        "checkpoint": {"intervalSteps": 1000, "exportDiffusers": False},
    }
    precomputed = run_in_process(
        make_config(tmp_path / "a", data={"train": {"captionDropProb": 0.0}}, **common)
    )
    online = run_in_process(
        make_config(
            tmp_path / "b",
            model={"vae": encoders, "textEncoder": encoders},
            data={
                "train": {
                    "local": str(synth_dataset.raw),
                    "precomputedLatents": False,
                    "captionDropProb": 0.0,
                }
            },
            **common,
        )
    )
    assert sorted(online.losses) == [1, 2]  # the raw-image path trains
    # fp16 storage of the precomputed latents is the only difference.
    for step, loss in online.losses.items():
        expected = precomputed.losses[step]
        assert math.isclose(loss, expected, rel_tol=2e-3), (step, loss, expected)


def test_synthesized_data_needs_nothing_staged(tmp_path: Path) -> None:
    """`data.synthesize`: local rank 0 writes the dataset and encoders where the config reads
    them, the other rank waits for it, and two processes train on it."""
    out = tmp_path / "synthetic"
    config = base_config(out / "latents", tmp_path / "ckpt")
    config["data"]["synthesize"] = {"out": str(out), "numSamples": 32}
    config["model"] |= {"vae": str(out / "encoders"), "textEncoder": str(out / "encoders")}
    config["training"]["maxSteps"] = 2
    run = launch_trainer(tmp_path / "run", config, nproc=2)
    assert run.returncode == 0, run.output[-3000:]
    assert sorted(run.losses) == [1, 2]
    assert (out / ".synthesized").is_file()
    assert (out / "latents" / "index.json").is_file()
    assert not list(tmp_path.glob("synthetic.staging-*"))
    assert "synthesized 32 samples" in run.output
