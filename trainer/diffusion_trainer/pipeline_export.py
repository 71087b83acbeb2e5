"""Write gathered U-Net weights as a diffusers StableDiffusionPipeline folder.

unet/ holds what the pipeline should sample with (the EMA weights when kept), unet_noema/ the
trained weights (SD's name for them, only with EMA), scheduler/ DDIM on the training betas, and
vae/, text_encoder/, tokenizer/ plus model_index.json come from the configured encoder sources.
Without those sources only the U-Net(s) and scheduler are written, with a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from diffusion_trainer.config import ModelConfig
from diffusion_trainer.encoders import load_text_encoder, load_vae
from diffusion_trainer.schedulers import build_inference_scheduler

log = logging.getLogger(__name__)


def unet_from_state(config: dict[str, Any], state: dict[str, torch.Tensor]) -> Any:
    # Meta init + assign: the module takes the gathered tensors as they are, no second copy.
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    unet.load_state_dict(state, assign=True, strict=True)
    return unet


def missing_encoder_fields(model: ModelConfig) -> list[str]:
    """Config fields that would name the VAE / text encoder the pipeline lacks."""
    missing = []
    if model.vae_source is None:
        missing.append("model.vae")
    if model.text_encoder_source is None:
        missing.append("model.textEncoder")
    return missing


def assemble_pipeline(unet: Any, scheduler: Any, model: ModelConfig) -> Any:
    """The pipeline around `unet`, with the encoders loaded on CPU in fp32 (what ships)."""
    vae_source, text_source = model.vae_source, model.text_encoder_source
    assert vae_source is not None and text_source is not None
    cpu = torch.device("cpu")
    text = load_text_encoder(text_source, cpu, torch.float32)
    return StableDiffusionPipeline(
        vae=load_vae(vae_source, cpu, torch.float32),
        text_encoder=text.model,
        tokenizer=text.tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def write_pipeline_folder(
    folder: Path,
    unet_config: dict[str, Any],
    weights: dict[str, torch.Tensor],
    ema_weights: dict[str, torch.Tensor] | None,
    model: ModelConfig,
) -> None:
    """Write the export layout (module docstring) under `folder`."""
    sampled = weights if ema_weights is None else ema_weights
    unet = unet_from_state(unet_config, sampled)
    if ema_weights is not None:
        unet_from_state(unet_config, weights).save_pretrained(str(folder / "unet_noema"))
    scheduler = build_inference_scheduler(model, "ddim")
    missing = missing_encoder_fields(model)
    if missing:
        # No model_index.json: it would name components that are not in the folder.
        log.warning(
            "the export holds only unet/ and scheduler/, not a loadable StableDiffusionPipeline: "
            "set %s or model.pretrained to ship the VAE and text encoder with it",
            " and ".join(missing),
        )
        unet.save_pretrained(str(folder / "unet"))
        scheduler.save_pretrained(str(folder / "scheduler"))
        return
    # diffusers writes model_index.json itself, matching the components it saves.
    assemble_pipeline(unet, scheduler, model).save_pretrained(str(folder))
