"""Build an Evaluator from the config: the frozen VAE, the unconditional input, the metrics and
the eval set. Shared by the trainer's online evaluation and `dtj eval`."""

from __future__ import annotations

import logging
from typing import Any

import torch

from diffusion_trainer.config import TrainerConfig
from diffusion_trainer.distributed import Runtime
from diffusion_trainer.empty_caption import load_empty_caption
from diffusion_trainer.encoders import (
    TEXT_MAX_LENGTH,
    TextEncoder,
    load_text_encoder,
    load_vae,
    vae_downsample_factor,
    vae_scaling_factor,
)
from diffusion_trainer.eval_data import EvalSet
from diffusion_trainer.eval_metrics import build_clip_score, build_fid
from diffusion_trainer.evaluate import EvalModels, Evaluator
from diffusion_trainer.fid_features import INCEPTION_NUM_FEATURES, describe_features

log = logging.getLogger("diffusion_trainer")


def needs_text_encoder(config: TrainerConfig) -> bool:
    eval_data = config.data.eval
    return eval_data is not None and not eval_data.precomputed_latents


def load_eval_text_encoder(config: TrainerConfig, device: torch.device) -> TextEncoder | None:
    source = config.model.text_encoder_source
    if source is None:
        return None
    return load_text_encoder(source, device, torch.float32)


def resolve_unconditional(
    config: TrainerConfig,
    text_encoder: TextEncoder | None,
    train_empty_caption: torch.Tensor | None,
    text_dim: int,
) -> torch.Tensor:
    """The encoded "" that training dropped captions to, so guidance pushes away from it."""
    if text_encoder is not None:
        ids = text_encoder.tokenize([""])
        return text_encoder.encode_ids(ids)[0].float()
    assert config.data.eval is not None
    stored = load_empty_caption(config.data.eval)
    if stored is None:
        stored = train_empty_caption
    if stored is None:  # training used zeros for dropped captions: sample with the same
        return torch.zeros(TEXT_MAX_LENGTH, text_dim)
    return stored.float()


def warn_if_too_few_samples(config: TrainerConfig) -> None:
    eval_config = config.eval
    uses_inception = "fid" in eval_config.metrics and eval_config.fid_feature_extractor is None
    if uses_inception and eval_config.num_samples < INCEPTION_NUM_FEATURES:
        log.warning(
            "eval.numSamples=%d is below Inception's %d features: FID is strongly biased "
            "upwards; use 10,000 or more (30,000 for numbers comparable with papers)",
            eval_config.num_samples,
            INCEPTION_NUM_FEATURES,
        )


def build_evaluator(
    config: TrainerConfig,
    runtime: Runtime,
    text_dim: int,
    stats_root: str,
    *,
    vae: Any = None,
    text_encoder: TextEncoder | None = None,
    train_empty_caption: torch.Tensor | None = None,
    show_progress: bool = False,
) -> Evaluator:
    """`vae`/`text_encoder` reuse the trainer's frozen encoders when it has them."""
    eval_data, eval_config, device = config.data.eval, config.eval, runtime.device
    assert eval_data is not None, "config validation requires data.eval for evaluation"
    if vae is None:
        vae_source = config.model.vae_source
        assert vae_source is not None, "config validation requires a VAE for evaluation"
        vae = load_vae(vae_source, device, torch.float32)
    if text_encoder is None and needs_text_encoder(config):
        text_encoder = load_eval_text_encoder(config, device)
    unconditional = resolve_unconditional(config, text_encoder, train_empty_caption, text_dim)
    resolution = eval_config.resolution or config.data.train.resolution
    warn_if_too_few_samples(config)
    models = EvalModels(
        vae=vae,
        latent_scale=vae_scaling_factor(vae),
        latent_size=resolution // vae_downsample_factor(vae),
        unconditional=unconditional.to(device),
        fid=build_fid(eval_config.fid_feature_extractor, device)
        if "fid" in eval_config.metrics
        else None,
        clip=build_clip_score(eval_config.clip_model, device)
        if "clip" in eval_config.metrics
        else None,
        feature_description=describe_features(eval_config.fid_feature_extractor),
        use_bf16=device.type == "cuda" and config.training.precision == "bf16",
    )
    eval_set = EvalSet(
        eval_data,
        resolution,
        device,
        vae=vae,
        text_encoder=text_encoder,
        batch_size=eval_config.batch_size,
    )
    return Evaluator(
        eval_config,
        config.model,
        runtime,
        models=models,
        eval_set=eval_set,
        stats_root=stats_root,
        show_progress=show_progress,
    )
