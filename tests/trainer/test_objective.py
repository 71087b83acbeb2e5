"""The objective against diffusers' own DDPMScheduler, and the per-sample randomness."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from diffusers import DDPMScheduler

from diffusion_trainer.config import ModelConfig
from diffusion_trainer.objective import DiffusionObjective, build_noise_scheduler, draw_sample_noise

CPU = torch.device("cpu")


def reference_scheduler(**kwargs: object) -> Any:
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        **kwargs,
    )


def test_schedule_is_sd_scaled_linear() -> None:
    ours = build_noise_scheduler(ModelConfig())
    reference = reference_scheduler()
    assert torch.allclose(ours.betas, reference.betas)
    assert ours.betas[0].item() == pytest.approx(0.00085)
    assert ours.betas[-1].item() == pytest.approx(0.012)
    assert ours.config.prediction_type == "epsilon"


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_noising_and_target_match_diffusers(prediction_type: str) -> None:
    objective = DiffusionObjective(ModelConfig(prediction_type=prediction_type), CPU)
    reference = reference_scheduler(prediction_type=prediction_type)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn((6, 4, 8, 8), generator=generator)
    noise = torch.randn((6, 4, 8, 8), generator=generator)
    timesteps = torch.tensor([0, 1, 250, 500, 998, 999])
    noisy = objective.add_noise(latents, noise, timesteps)
    assert torch.allclose(noisy, reference.add_noise(latents, noise, timesteps), atol=1e-6)
    target = objective.target(latents, noise, timesteps)
    expected = (
        noise if prediction_type == "epsilon" else reference.get_velocity(latents, noise, timesteps)
    )
    assert torch.allclose(target, expected, atol=1e-6)


def test_zero_terminal_snr_rescale() -> None:
    config = ModelConfig(zero_terminal_snr=True, prediction_type="v_prediction", min_snr_gamma=5)
    objective = DiffusionObjective(config, CPU)
    assert objective.sqrt_alpha[-1].item() == pytest.approx(0.0, abs=1e-6)
    plain = DiffusionObjective(ModelConfig(), CPU)
    assert plain.sqrt_alpha[-1].item() > 0.04
    weights = objective.loss_weights(torch.tensor([0, 500, 999]))
    assert weights is not None and torch.isfinite(weights).all()
    assert weights[-1].item() == pytest.approx(0.0, abs=1e-6)  # v-target at SNR 0: weight 0


def test_min_snr_gamma_weights() -> None:
    objective = DiffusionObjective(ModelConfig(min_snr_gamma=5.0), CPU)
    timesteps = torch.tensor([0, 999])
    weights = objective.loss_weights(timesteps)
    assert weights is not None
    snr = objective.snr[timesteps]
    assert weights[0].item() == pytest.approx(5.0 / snr[0].item())  # low noise: clipped
    assert weights[1].item() == pytest.approx(1.0)  # high noise: SNR < gamma
    assert DiffusionObjective(ModelConfig(), CPU).loss_weights(timesteps) is None


def test_sample_noise_depends_only_on_sample_identity() -> None:
    """Same (seed, epoch, sample) -> same draws, whatever batch the sample lands in."""
    shape = (4, 8, 8)
    kwargs = {"caption_drop_prob": 0.5, "offset_noise": 0.0}
    both = draw_sample_noise([11, 42], 0, 7, shape, **kwargs)
    alone = draw_sample_noise([42], 0, 7, shape, **kwargs)
    assert torch.equal(both.noise[1], alone.noise[0])
    assert torch.equal(both.timesteps[1:], alone.timesteps)
    assert torch.equal(both.drop_caption[1:], alone.drop_caption)
    other_epoch = draw_sample_noise([42], 1, 7, shape, **kwargs)
    assert not torch.equal(other_epoch.noise, alone.noise)


def test_caption_drop_rate_and_offset_noise() -> None:
    ids = list(range(2000))
    draws = draw_sample_noise(ids, 0, 1, (4, 2, 2), caption_drop_prob=0.1, offset_noise=0.0)
    assert 0.07 < draws.drop_caption.float().mean().item() < 0.13
    assert draws.timesteps.min() >= 0 and draws.timesteps.max() <= 999
    plain = draw_sample_noise(ids[:500], 0, 1, (4, 16, 16), caption_drop_prob=0, offset_noise=0)
    offset = draw_sample_noise(ids[:500], 0, 1, (4, 16, 16), caption_drop_prob=0, offset_noise=1)
    # Offset noise adds a per-sample, per-channel constant: channel means spread out.
    assert offset.noise.mean(dim=(2, 3)).std() > 5 * plain.noise.mean(dim=(2, 3)).std()
