"""Evaluation: sampling, FID and CLIP score, online in the training loop and offline with
`dtj eval`, on tiny models built from configs (a tiny CLIP trained on the shapes and a random
feature network stand in for CLIP and Inception, whose weights cannot be loaded here)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from trainer_harness import REPO_ROOT, TrainerRun, child_env, run_in_process

from diffusion_trainer.eval_metrics import build_fid
from diffusion_trainer.evaluate import shard_indices
from diffusion_trainer.fid_features import write_tiny_fid_features
from diffusion_trainer.model import build_unet, load_unet_config
from diffusion_trainer.sampling import initial_noise, predict_guided, sample_latents
from diffusion_trainer.synthetic_shapes import COLOURS, SHAPES, draw_shape
from testenv.ports import free_port

GUIDANCE_SCALES = [1.0, 3.0]
NUM_EVAL_SAMPLES = 12
NUM_GRID_IMAGES = 4


def draw_images(seed: int, num: int = 160, colours: tuple[str, ...] = tuple(COLOURS)) -> Any:
    rng = np.random.default_rng(seed)
    images = [
        np.asarray(draw_shape(SHAPES[i % len(SHAPES)], colours[i % len(colours)], 64, rng))
        for i in range(num)
    ]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def compute_fid(features: Path, real: torch.Tensor, fake: torch.Tensor) -> float:
    fid = build_fid(str(features), torch.device("cpu"))
    fid.update(real, real=True)
    fid.update(fake, real=False)
    return float(fid.compute())


def test_fid_is_zero_for_a_set_against_itself_and_large_for_a_different_set(
    tmp_path: Path,
) -> None:
    features = write_tiny_fid_features(tmp_path / "features", seed=0)
    shapes = draw_images(seed=1)
    same_distribution = compute_fid(features, shapes, draw_images(seed=2))
    only_red = compute_fid(features, shapes, draw_images(seed=3, colours=("red",)))
    assert abs(compute_fid(features, shapes, shapes)) < 1e-6
    assert same_distribution < 1.0
    assert only_red > 20 * same_distribution
    assert only_red > 5.0


def captioned_images(seed: int, num: int = 48) -> tuple[torch.Tensor, list[str]]:
    """Every colour x shape pair in turn, with its caption."""
    rng = np.random.default_rng(seed)
    pairs = [(COLOURS_LIST[i % 4], SHAPES[(i // 4) % len(SHAPES)]) for i in range(num)]
    images = [np.asarray(draw_shape(shape, colour, 64, rng)) for colour, shape in pairs]
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return pixels, [f"a {colour} {shape}" for colour, shape in pairs]


COLOURS_LIST = list(COLOURS)


@pytest.mark.slow
def test_clip_score_ranks_matching_captions_above_shuffled_ones(synth_dataset: Any) -> None:
    """The tiny CLIP `dtj data synth` trains, scored through torchmetrics' CLIPScore on fresh
    images: captions that describe the image score clearly higher than captions of another
    colour and shape."""
    from diffusion_trainer.eval_metrics import build_clip_score

    images, captions = captioned_images(seed=21)
    # Shifting by 5 pairs gives every image a caption of another colour and another shape.
    mismatched = captions[5:] + captions[:5]
    assert all(a != b for a, b in zip(captions, mismatched, strict=True))
    scores = {}
    for name, texts in (("matching", captions), ("mismatched", mismatched)):
        metric = build_clip_score(str(synth_dataset.encoders / "clip"), torch.device("cpu"))
        metric.update(images, texts)
        scores[name] = float(metric.compute())
    assert scores["matching"] > scores["mismatched"] + 10.0, scores


def test_guidance_scale_one_is_the_plain_conditional_prediction() -> None:
    torch.manual_seed(0)
    unet = build_unet(load_unet_config("tiny", resolution=64)).eval()
    latents, timestep = torch.randn(2, 4, 8, 8), torch.tensor(500)
    text, unconditional = torch.randn(2, 77, 64), torch.randn(2, 77, 64)
    with torch.no_grad():
        conditional = unet(latents, timestep, text).sample
        plain = unet(latents, timestep, unconditional).sample
        guided_one = predict_guided(
            unet, latents, timestep, text=text, unconditional=unconditional, guidance_scale=1.0
        )
        guided_three = predict_guided(
            unet, latents, timestep, text=text, unconditional=unconditional, guidance_scale=3.0
        )
    assert torch.equal(guided_one, conditional)
    expected = plain + 3.0 * (conditional - plain)
    torch.testing.assert_close(guided_three, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_samplers_run_on_the_training_schedule(sampler: str, prediction_type: str) -> None:
    from diffusion_trainer.config import ModelConfig
    from diffusion_trainer.schedulers import build_inference_scheduler

    model = ModelConfig(prediction_type=prediction_type)
    scheduler = build_inference_scheduler(model, sampler)
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert (scheduler.config.beta_start, scheduler.config.beta_end) == (0.00085, 0.012)
    assert scheduler.config.prediction_type == prediction_type
    torch.manual_seed(0)
    unet = build_unet(load_unet_config("tiny", resolution=64)).eval()
    noise = initial_noise([0, 1], seed=0, latent_shape=(4, 8, 8))
    text = torch.randn(2, 77, 64)
    latents = sample_latents(
        unet,
        scheduler,
        noise,
        text=text,
        unconditional=torch.zeros_like(text),
        guidance_scale=3.0,
        num_inference_steps=4,
    )
    assert latents.shape == noise.shape and torch.isfinite(latents).all()
    assert not torch.allclose(latents, noise)


def test_eval_noise_depends_only_on_the_seed_and_the_sample_index() -> None:
    batch = initial_noise([3, 8, 5], seed=11, latent_shape=(4, 8, 8))
    alone = initial_noise([8], seed=11, latent_shape=(4, 8, 8))
    assert torch.equal(batch[1], alone[0])
    assert not torch.equal(batch[0], batch[2])
    assert not torch.equal(alone, initial_noise([8], seed=12, latent_shape=(4, 8, 8)))


@pytest.mark.parametrize(("num_samples", "world_size"), [(12, 1), (12, 2), (13, 4), (3, 4)])
def test_every_sample_is_evaluated_once_and_every_rank_runs_as_many_batches(
    num_samples: int, world_size: int
) -> None:
    shards = [shard_indices(num_samples, rank, world_size, 4) for rank in range(world_size)]
    real = sorted(i for shard in shards for batch in shard for i in batch if i < num_samples)
    assert real == list(range(num_samples))
    assert len({len(shard) for shard in shards}) == 1  # same number of batches on every rank
    assert len({tuple(len(batch) for batch in shard) for shard in shards}) == 1


def eval_section(synth: Any, interval_steps: int) -> dict[str, Any]:
    encoders = synth.encoders
    return {
        "intervalSteps": interval_steps,
        "guidanceScales": GUIDANCE_SCALES,
        "numSamples": NUM_EVAL_SAMPLES,
        "numInferenceSteps": 4,
        "batchSize": 4,
        "numGridImages": NUM_GRID_IMAGES,
        "clipModel": str(encoders / "clip"),
        "fidFeatureExtractor": str(encoders / "fid-features"),
    }


@pytest.fixture(scope="module")
def eval_config(synth_dataset: Any) -> Callable[..., dict[str, Any]]:
    """Online evaluation on the raw shapes (real images; captions encoded on the fly)."""

    def make(interval_steps: int) -> dict[str, Any]:
        encoders = str(synth_dataset.encoders)
        return {
            "model": {"vae": encoders, "textEncoder": encoders},
            "data": {
                "eval": {"local": str(synth_dataset.raw), "precomputedLatents": False},
            },
            "eval": eval_section(synth_dataset, interval_steps),
        }

    return make


@pytest.fixture(scope="module")
def run_with_eval(
    tmp_path_factory: pytest.TempPathFactory,
    make_config: Callable[..., dict[str, Any]],
    eval_config: Callable[..., dict[str, Any]],
) -> TrainerRun:
    """The reference run's job with evaluation every 5 steps, stopped at step 5 and resumed
    to step 10 (two runs on one checkpoint URI); the telemetry of the second is kept."""
    from diffusion_trainer.metrics import TrainerTelemetry

    root = tmp_path_factory.mktemp("with-eval")
    config = make_config(root / "ckpt", **eval_config(5))
    first = run_in_process({**config, "training": {**config["training"], "maxSteps": 5}})
    assert first.returncode == 0
    telemetry = TrainerTelemetry(run=_run_info(), max_steps=10, global_batch_size=8, world_size=1)
    resumed = run_in_process(config, telemetry=telemetry)
    resumed.losses = {**first.losses, **resumed.losses}
    resumed.extra["telemetry"] = telemetry
    return resumed


def _run_info() -> Any:
    from diffusion_trainer.config import RunInfo

    return RunInfo(job_name="eval-test", namespace="tests", attempt=1)


@pytest.mark.slow
def test_training_with_evaluation_and_a_resume_matches_the_reference_exactly(
    run_with_eval: TrainerRun, reference_run: TrainerRun
) -> None:
    """Evaluation neither draws from the training randomness nor touches the weights."""
    assert run_with_eval.returncode == 0
    assert run_with_eval.losses == reference_run.losses


@pytest.mark.slow
def test_online_eval_reports_metrics_progress_and_a_grid(run_with_eval: TrainerRun) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    telemetry = run_with_eval.extra["telemetry"]
    latest = telemetry.progress()["eval"]
    assert latest["step"] == 10
    assert set(latest["fid"]) == set(latest["clipScore"]) == {"1.0", "3.0"}
    assert all(np.isfinite(value) for value in latest["fid"].values())
    grid = Image.open(latest["grid"])
    # one row per guidance scale, one 64 px column per grid prompt, 2 px gaps
    assert grid.size == (NUM_GRID_IMAGES * 66 - 2, len(GUIDANCE_SCALES) * 66 - 2)
    report = json.loads(Path(latest["report"]).read_text())
    assert report["fid"] == latest["fid"]
    assert report["numInferenceSteps"] == 4
    exposition = telemetry.metrics.registry
    samples = {
        (sample.name, sample.labels.get("guidance_scale")): sample.value
        for family in text_string_to_metric_families(_exposition_text(exposition))
        for sample in family.samples
    }
    assert samples[("dtj_trainer_eval_fid", "3.0")] == pytest.approx(latest["fid"]["3.0"])
    assert samples[("dtj_trainer_eval_clip_score", "1.0")] == pytest.approx(
        latest["clipScore"]["1.0"]
    )
    checkpoints = run_with_eval.checkpoint_uri
    assert (checkpoints / "eval" / "step-00000005" / "grid.png").is_file()
    # Both evaluations (two processes) used one set of cached real-image statistics.
    assert len(list((checkpoints / "eval" / "real-stats").iterdir())) == 1


def _exposition_text(registry: Any) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def offline_eval(checkpoint: Path, data: Path, out: Path, synth: Any, nproc: int) -> dict[str, Any]:
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
        launcher += ["--master-port", str(free_port())]
    command = [
        *launcher,
        "-m",
        "diffusion_trainer",
        "eval",
        "--checkpoint",
        str(checkpoint),
        "--data",
        str(data),
        "--out",
        str(out),
        "--guidance-scales",
        "1,3",
        "--num-samples",
        "10",
        "--seed",
        "5",
        "--steps",
        "3",
        "--batch-size",
        "3",
        "--unet",
        "tiny",
        "--resolution",
        "64",
        "--vae",
        str(synth.encoders),
        "--clip-model",
        str(synth.encoders / "clip"),
        "--fid-features",
        str(synth.encoders / "fid-features"),
    ]
    done = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return dict(json.loads((out / "report.json").read_text()))


@pytest.mark.slow
def test_offline_eval_gives_the_same_numbers_on_one_and_two_processes(
    reference_run: TrainerRun, synth_dataset: Any, tmp_path: Path
) -> None:
    """`dtj eval` of a training checkpoint on precomputed latents (a copy: one Streaming cache
    per dataset), alone and under torchrun with 2 processes."""
    data = Path(shutil.copytree(synth_dataset.latents, tmp_path / "eval-latents"))
    checkpoint = reference_run.checkpoint_uri / "step-00000010"
    one = offline_eval(checkpoint, data, tmp_path / "one", synth_dataset, nproc=1)
    two = offline_eval(checkpoint, data, tmp_path / "two", synth_dataset, nproc=2)
    assert one["step"] == 10 and one["worldSize"] == 1 and two["worldSize"] == 2
    assert one["useEma"] is True
    for metric in ("fid", "clipScore"):
        assert set(one[metric]) == {"1.0", "3.0"}
        for scale, value in one[metric].items():
            assert two[metric][scale] == pytest.approx(value, rel=1e-4, abs=1e-4)
    assert (tmp_path / "one" / "grid.png").is_file()
