"""The shipped U-Nets against stock diffusers, FLOP counting, and the exported folders."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import torch
import torch.distributed as dist
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from trainer_harness import TrainerRun

from diffusion_trainer.config import ModelConfig, TrainerConfig, TrainingConfig
from diffusion_trainer.flops import count_train_flops_per_image
from diffusion_trainer.model import (
    build_unet,
    count_parameters,
    load_pretrained_unet,
    load_unet_config,
)
from diffusion_trainer.parallelize import parallelize_unet
from diffusion_trainer.pipeline_export import write_pipeline_folder

SD2_BASE_PARAMS = 865_910_724
# The SD-2-base U-Net as published (stabilityai/stable-diffusion-2-base unet/config.json).
SD2_BASE_STOCK = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "upcast_attention": False,
    "dual_cross_attention": False,
}
NARROW = {
    "block_out_channels": [32, 32, 64, 64],
    "attention_head_dim": [2, 2, 4, 4],
    "cross_attention_dim": 32,
    "norm_num_groups": 8,
}


@pytest.fixture
def world_of_one() -> Iterator[Any]:
    from diffusion_trainer.distributed import init_runtime, shutdown_runtime

    runtime = init_runtime()
    yield runtime
    shutdown_runtime()


def test_sd2_base_has_the_published_size_and_config() -> None:
    config = load_unet_config("sd2-base", resolution=512)
    for key, value in SD2_BASE_STOCK.items():
        assert config[key] == value, key
    assert load_unet_config("sd2-base", resolution=256)["sample_size"] == 32
    unet = build_unet(config, device="meta")  # no memory, no init cost
    assert count_parameters(unet) == SD2_BASE_PARAMS
    with torch.device("meta"):
        stock: Any = UNet2DConditionModel(**SD2_BASE_STOCK)
    assert count_parameters(stock) == SD2_BASE_PARAMS


def test_sharded_unet_forward_matches_stock_diffusers(world_of_one: Any) -> None:
    """Our build (package config, SDPA, FSDP2 per block + root) computes what diffusers'
    UNet2DConditionModel computes with the same weights; narrowed SD-2-base widths keep it
    cheap while every other architectural field is SD-2-base's."""
    ours_config = {**load_unet_config("sd2-base", resolution=64), **NARROW}
    torch.manual_seed(0)
    ours = build_unet(ours_config)
    stock: Any = UNet2DConditionModel(**{**SD2_BASE_STOCK, **NARROW, "sample_size": 8})
    stock.load_state_dict(ours.state_dict())
    training = TrainingConfig(precision="fp32", channels_last=True)
    sharded = parallelize_unet(ours, training, world_of_one.mesh)
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn((2, 4, 8, 8), generator=generator)
    timesteps = torch.tensor([10, 900])
    text = torch.randn((2, 77, 32), generator=generator)
    with torch.no_grad():
        expected = stock(sample, timesteps, text).sample
        actual = sharded(
            sample.contiguous(memory_format=torch.channels_last), timesteps, text, return_dict=False
        )[0]
    assert actual.shape == expected.shape == (2, 4, 8, 8)
    assert torch.allclose(actual, expected, atol=1e-5, rtol=1e-4)


def run_tiny_step(runtime: Any, **training: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Prediction and conv_in gradient of one forward/backward of the sharded tiny U-Net."""
    torch.manual_seed(0)
    unet = build_unet(load_unet_config("tiny", resolution=64))
    unet = parallelize_unet(unet, TrainingConfig(**training), runtime.mesh)
    generator = torch.Generator().manual_seed(2)
    sample = torch.randn((2, 4, 8, 8), generator=generator)
    text = torch.randn((2, 77, 64), generator=generator)
    prediction = unet(sample, torch.tensor([3, 700]), text, return_dict=False)[0]
    prediction.float().square().mean().backward()
    return prediction.detach(), unet.conv_in.weight.grad.full_tensor()


def test_activation_checkpointing_and_bf16(world_of_one: Any) -> None:
    plain, plain_grad = run_tiny_step(world_of_one, precision="fp32")
    checkpointed, checkpointed_grad = run_tiny_step(
        world_of_one, precision="fp32", activation_checkpointing=True
    )
    assert torch.allclose(checkpointed, plain, atol=1e-6)
    assert torch.allclose(checkpointed_grad, plain_grad, atol=1e-6)
    low, low_grad = run_tiny_step(world_of_one, precision="bf16")
    assert low.dtype == torch.bfloat16  # computed in bf16 ...
    assert low_grad.dtype == torch.float32  # ... onto fp32 master weights and gradients
    assert torch.allclose(low.float(), plain, atol=0.1, rtol=0.1)


def test_flop_count_matches_the_measured_sd2_step() -> None:
    """0.544 TFLOP per image per training step at 256px (fwd+bwd, performance notes)."""
    flops = count_train_flops_per_image(
        load_unet_config("sd2-base", resolution=256), (4, 32, 32), (77, 1024)
    )
    assert flops == pytest.approx(0.544e12, rel=0.02)


def read_checkpoint(path: Path, scratch: Path) -> dict[str, Any]:
    """A DCP checkpoint as plain tensors ({"model": ..., "ema": ...}), read without a group."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(path, scratch / "checkpoint.pt")
    return cast(dict[str, Any], torch.load(scratch / "checkpoint.pt", weights_only=True))


def same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> bool:
    return actual.keys() == expected.keys() and all(
        torch.equal(actual[name], value) for name, value in expected.items()
    )


@pytest.mark.slow
def test_exported_folder_is_a_stable_diffusion_pipeline(
    reference_run: TrainerRun, tmp_path: Path
) -> None:
    """The export loads as is: DDIM on the training betas, the EMA weights in unet/ and the
    trained ones in unet_noema/, and it generates an image."""
    export = reference_run.checkpoint_uri / "export" / "step-00000010"
    assert reference_run.summary is not None
    assert reference_run.summary["exported"] == str(export)
    pipeline: Any = StableDiffusionPipeline.from_pretrained(export)
    scheduler = pipeline.scheduler
    assert isinstance(scheduler, DDIMScheduler)
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.beta_start == pytest.approx(0.00085)
    assert scheduler.config.beta_end == pytest.approx(0.012)
    trained_config = TrainerConfig.model_validate(reference_run.extra["config"])
    assert scheduler.config.prediction_type == trained_config.model.prediction_type

    checkpoint = read_checkpoint(reference_run.checkpoint_uri / "step-00000010", tmp_path)
    sampled = pipeline.unet.state_dict()
    trained = UNet2DConditionModel.from_pretrained(export / "unet_noema").state_dict()
    assert count_parameters(pipeline.unet) == 3_277_988
    assert same_tensors(sampled, checkpoint["ema"])
    assert same_tensors(trained, checkpoint["model"])
    torch.manual_seed(7)  # the run's seed: its initial weights
    initial = build_unet(load_unet_config("tiny", resolution=64)).state_dict()
    name = "conv_in.weight"
    assert not torch.equal(trained[name], initial[name])  # trained
    assert not torch.equal(sampled[name], trained[name])  # EMA lags the weights

    image = pipeline(
        "a red circle",
        num_inference_steps=2,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert image.shape == (1, 64, 64, 3)
    assert dist.is_initialized() is False


def test_latents_only_export_writes_unet_and_scheduler_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No VAE or text-encoder source: U-Nets and scheduler only, no model_index.json that
    would claim components the folder lacks, and a warning naming the fields to set."""
    config = load_unet_config("tiny", resolution=64)
    weights = build_unet(config).state_dict()
    ema_weights = {name: value + 1.0 for name, value in weights.items()}
    with caplog.at_level(logging.WARNING, logger="diffusion_trainer.pipeline_export"):
        write_pipeline_folder(tmp_path, config, weights, ema_weights, ModelConfig(unet="tiny"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scheduler", "unet", "unet_noema"]
    assert same_tensors(
        UNet2DConditionModel.from_pretrained(tmp_path / "unet").state_dict(), ema_weights
    )
    noema = UNet2DConditionModel.from_pretrained(tmp_path / "unet_noema").state_dict()
    assert same_tensors(noema, weights)
    assert isinstance(DDIMScheduler.from_pretrained(tmp_path / "scheduler"), DDIMScheduler)
    assert "model.vae and model.textEncoder or model.pretrained" in caplog.text


@pytest.mark.slow
def test_pretrained_unet_loads_from_local_folders_offline(
    reference_run: TrainerRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`model.pretrained` accepts a pipeline folder (unet/ inside) or the U-Net folder itself;
    with HF_HUB_OFFLINE=1 a hub id that is not cached fails at once instead of downloading."""
    export = reference_run.checkpoint_uri / "export" / "step-00000010"
    expected = UNet2DConditionModel.from_pretrained(export / "unet").state_dict()
    for source in (export, export / "unet"):
        loaded = load_pretrained_unet(str(source)).state_dict()
        assert all(torch.equal(loaded[name], value) for name, value in expected.items())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError):
        load_pretrained_unet("dtj-tests/not-a-cached-model")
