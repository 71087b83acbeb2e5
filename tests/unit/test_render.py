"""Presets, explicit fields and defaults resolve into one trainer config."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from diffusion_operator.partial import make_partial
from diffusion_operator.render import merge_dicts, render_trainer_config
from diffusion_operator.spec import DiffusionTrainingJobSpec
from diffusion_trainer.config import ConfigError, TrainingConfig


def spec_of(**fields) -> DiffusionTrainingJobSpec:
    return DiffusionTrainingJobSpec.model_validate({"image": "trainer:1", **fields})


NO_EVAL = {"intervalSteps": 0}
EVAL_INPUTS = {
    "model": {"vae": "stabilityai/stable-diffusion-2-base"},
    "data": {"eval": {"remote": "s3://bucket/coco", "local": "/tmp/coco"}},
}


def test_a_preset_that_evaluates_needs_eval_data_and_a_vae():
    with pytest.raises(ConfigError, match=r"data\.eval .*model\.vae.*eval\.intervalSteps: 0"):
        render_trainer_config(spec_of(preset="sd2-base-256"), "j", "ns", "/c")
    config = render_trainer_config(spec_of(preset="sd2-base-256", **EVAL_INPUTS), "j", "ns", "/c")
    assert config.eval.interval_steps == 10_000
    assert config.data.eval is not None and config.data.eval.remote == "s3://bucket/coco"


def test_eval_data_needs_its_own_cache_directory():
    inputs = {**EVAL_INPUTS, "data": {"train": {"local": "/cache"}, "eval": {"local": "/cache"}}}
    with pytest.raises(ConfigError, match=r"data\.eval\.local different from data\.train\.local"):
        render_trainer_config(spec_of(preset="sd2-base-256", **inputs), "j", "ns", "/c")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("resolution", 512),
        ("captionDropProb", 0.0),
        ("shuffle", False),
        ("shuffleAlgo", "naive"),
        ("shuffleBlockSize", 1000),
        ("numWorkers", 0),
    ],
)
def test_train_only_fields_on_eval_data_are_refused_not_ignored(field, value):
    eval_data = {**EVAL_INPUTS["data"]["eval"], field: value}
    inputs = {**EVAL_INPUTS, "data": {"eval": eval_data}}
    with pytest.raises(ConfigError, match=rf"data\.eval\.{field}: evaluation does not use"):
        render_trainer_config(spec_of(preset="sd2-base-256", **inputs), "j", "ns", "/c")
    same_as_default = {**EVAL_INPUTS, "data": {"eval": {**eval_data, "numWorkers": 4}}}
    if field == "numWorkers":  # the default value changes nothing, so it is accepted
        render_trainer_config(spec_of(preset="sd2-base-256", **same_as_default), "j", "ns", "/c")


def test_explicit_fields_override_the_preset():
    spec = spec_of(preset="sd2-base-256", training={"maxSteps": 1000, "lr": 5e-5}, eval=NO_EVAL)
    config = render_trainer_config(spec, "job", "ns", "/ckpt/ns/job")
    assert config.training.max_steps == 1000
    assert config.training.lr == 5e-5
    assert config.training.global_batch_size == 2048  # from the preset
    assert config.data.train.resolution == 256
    assert config.checkpoint.uri == "/ckpt/ns/job"  # operator default
    assert config.run.job_name == "job"


def test_sd2_512_preset_turns_on_ema():
    config = render_trainer_config(spec_of(preset="sd2-base-512", eval=NO_EVAL), "j", "ns", "/c")
    assert config.model.ema is not None
    assert config.model.ema.decay == 0.9999
    assert config.data.train.resolution == 512


def test_a_preset_ema_can_be_turned_off():
    spec = spec_of(preset="sd2-base-512", model={"ema": {"enabled": False}}, eval=NO_EVAL)
    config = render_trainer_config(spec, "j", "ns", "/c")
    assert config.model.ema is not None
    assert config.model.ema.enabled is False
    assert config.model.ema.decay == 0.9999  # the rest of the preset stays


def test_without_preset_trainer_defaults_apply():
    config = render_trainer_config(
        spec_of(training={"globalBatchSize": 64, "microBatchSize": 8}), "j", "ns", "/c"
    )
    assert config.model.unet == "sd2-base"
    assert config.training.precision == "bf16"


def test_indivisible_batch_names_the_field():
    spec = spec_of(preset="sd2-base-256", resources={"nodes": 3}, eval=NO_EVAL)
    with pytest.raises(ConfigError, match=r"spec\.training\.globalBatchSize"):
        render_trainer_config(spec, "j", "ns", "/c")


def test_hsdp_shard_groups_must_divide_the_world():
    resources = {"nodes": 2, "gpusPerNode": 8}
    hsdp = {"sharding": "hsdp"}
    spec = spec_of(preset="sd2-base-256", resources=resources, training=hsdp, eval=NO_EVAL)
    assert render_trainer_config(spec, "j", "ns", "/c").training.sharding == "hsdp"
    bad = spec_of(
        preset="sd2-base-256",
        resources=resources,
        training={"sharding": "hsdp", "hsdpShardSize": 6},
        eval=NO_EVAL,
    )
    with pytest.raises(ConfigError, match=r"spec\.training\.hsdpShardSize=6 does not divide"):
        render_trainer_config(bad, "j", "ns", "/c")


def test_fields_that_act_only_with_another_are_refused_alone():
    with pytest.raises(ValidationError, match="hsdpShardSize applies to sharding: hsdp only"):
        TrainingConfig.model_validate({"hsdpShardSize": 8})
    with pytest.raises(ValidationError, match="compileMode applies when compile is true"):
        TrainingConfig.model_validate({"compileMode": "reduce-overhead"})
    both = {"sharding": "hsdp", "hsdpShardSize": 8, "compile": True, "compileMode": "default"}
    assert TrainingConfig.model_validate(both).hsdp_shard_size == 8
    spec = spec_of(preset="sd2-base-256", training={"hsdpShardSize": 8}, eval=NO_EVAL)
    with pytest.raises(ConfigError, match="hsdpShardSize applies to sharding: hsdp only"):
        render_trainer_config(spec, "j", "ns", "/c")


def test_partial_models_keep_constraints_and_allow_omission():
    partial = make_partial(TrainingConfig)
    assert partial.model_validate({}).model_dump(exclude_none=True) == {}
    with pytest.raises(ValidationError, match="microBatchSize"):
        partial.model_validate({"microBatchSize": 0})
    with pytest.raises(ValidationError, match="Extra inputs"):
        partial.model_validate({"microBatchSzie": 4})


def test_merge_dicts_is_deep_and_does_not_mutate():
    base = {"a": {"b": 1, "c": 2}}
    merged = merge_dicts(base, {"a": {"c": 3}})
    assert merged == {"a": {"b": 1, "c": 3}}
    assert base == {"a": {"b": 1, "c": 2}}
