"""`dtj eval`'s arguments: the documented cluster Job is a valid invocation, and bad input is
refused with the flag to fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from diffusion_trainer.config import ConfigError
from diffusion_trainer.eval_cli import build_eval_parser, eval_config_from_args

ROOT = Path(__file__).resolve().parents[2]
EVAL_JOB = ROOT / "manifests" / "jobs" / "offline-eval.yaml"


def test_the_documented_eval_job_runs_a_valid_dtj_eval() -> None:
    job = yaml.safe_load(EVAL_JOB.read_text())
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][-2:] == ["-m", "diffusion_trainer"]
    assert container["args"][0] == "eval"
    config = eval_config_from_args(build_eval_parser().parse_args(container["args"][1:]))
    assert config.eval.guidance_scales == [1.0, 3.0, 7.0]
    assert config.eval.num_samples == 30_000
    assert config.model.unet == "sd2-base"
    assert config.data.eval is not None
    assert config.data.eval.remote == "s3://my-bucket/coco2014-val-256-latents"
    assert config.data.eval.precomputed_latents is True


def test_a_remote_dataset_needs_its_layout() -> None:
    args = build_eval_parser().parse_args(
        ["--checkpoint", "/ckpt/step-1", "--data", "s3://b/coco", "--vae", "v"]
    )
    with pytest.raises(ConfigError, match="--layout"):
        eval_config_from_args(args)


def test_raw_data_without_a_text_encoder_names_the_flags(tmp_path: Path) -> None:
    args = build_eval_parser().parse_args(
        ["--checkpoint", str(tmp_path), "--data", "s3://b/coco", "--layout", "raw", "--vae", "v"]
    )
    with pytest.raises(ConfigError, match=r"model\.textEncoder.*--text-encoder"):
        eval_config_from_args(args)


def test_out_of_range_guidance_is_refused() -> None:
    base = ["--checkpoint", "/c", "--data", "s3://b", "--layout", "latents", "--vae", "v"]
    args = build_eval_parser().parse_args([*base, "--guidance-scales", "0.5"])
    with pytest.raises(ConfigError, match="guidance_scales"):
        eval_config_from_args(args)
