"""Build everything one training run needs, from the config, on one rank."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from diffusion_trainer.config import TrainerConfig
from diffusion_trainer.data import NoiseSettings, TrainLoader, build_streaming_dataset
from diffusion_trainer.distributed import (
    Runtime,
    broadcast_from_main,
    build_training_mesh,
    shard_group,
)
from diffusion_trainer.ema import ShardedEma
from diffusion_trainer.empty_caption import load_empty_caption
from diffusion_trainer.encoders import (
    TextEncoder,
    load_text_encoder,
    load_tokenizer,
    load_vae,
    vae_downsample_factor,
    vae_scaling_factor,
)
from diffusion_trainer.model import (
    DiffusersModel,
    build_unet,
    load_pretrained_unet,
    load_unet_config,
)
from diffusion_trainer.objective import DiffusionObjective
from diffusion_trainer.optim import ShardLocalAdamW, build_lr_scheduler, build_optimizer
from diffusion_trainer.parallelize import PARAM_DTYPES, parallelize_unet, unet_mesh

log = logging.getLogger("diffusion_trainer")


@dataclass
class OnlineEncoders:
    """Frozen VAE + text encoder for raw image data."""

    vae: Any
    text: TextEncoder
    latent_scale: float
    downsample_factor: int
    empty_ids: torch.Tensor  # token ids of "" (the dropped caption)


@dataclass
class Components:
    unet: DiffusersModel  # FSDP-wrapped UNet2DConditionModel
    unet_config: dict[str, Any]
    optimizer: ShardLocalAdamW
    lr_scheduler: LambdaLR
    ema: ShardedEma | None
    objective: DiffusionObjective
    loader: TrainLoader
    encoders: OnlineEncoders | None
    # The ranks over which the gradient norm sums (HSDP's replicas hold copies).
    norm_group: torch.distributed.ProcessGroup
    empty_caption: torch.Tensor | None = None  # precomputed latents: the encoded ""


def build_model(config: TrainerConfig, runtime: Runtime) -> DiffusersModel:
    # Same seed on every rank: identical initial weights before sharding.
    torch.manual_seed(config.training.seed)
    if config.model.pretrained:
        log.info("loading U-Net weights from %s", config.model.pretrained)
        unet = load_pretrained_unet(config.model.pretrained)
    else:
        resolution = config.data.train.resolution
        unet = build_unet(load_unet_config(config.model.unet, resolution))
    unet.train()
    return parallelize_unet(unet, config.training, build_training_mesh(runtime, config.training))


def build_online_encoders(config: TrainerConfig, runtime: Runtime) -> OnlineEncoders | None:
    if config.data.train.precomputed_latents:
        return None
    vae_source, text_source = config.model.vae_source, config.model.text_encoder_source
    assert vae_source is not None and text_source is not None  # preflight checked
    on_gpu = runtime.device.type == "cuda"
    dtype = PARAM_DTYPES[config.training.precision] if on_gpu else torch.float32
    vae = load_vae(vae_source, runtime.device, dtype)
    text = load_text_encoder(text_source, runtime.device, dtype)
    return OnlineEncoders(
        vae=vae,
        text=text,
        latent_scale=vae_scaling_factor(vae),
        downsample_factor=vae_downsample_factor(vae),
        empty_ids=text.tokenize([""]),
    )


def build_loader(config: TrainerConfig, runtime: Runtime) -> TrainLoader:
    train = config.data.train
    tokenizer = None
    if not train.precomputed_latents:
        source = config.model.text_encoder_source
        assert source is not None
        tokenizer = load_tokenizer(source)
    noise = NoiseSettings(
        seed=config.training.seed,
        caption_drop_prob=train.caption_drop_prob,
        offset_noise=config.model.offset_noise,
    )
    dataset = build_streaming_dataset(
        train, config.training.micro_batch_size, config.training.seed, tokenizer, noise
    )
    return TrainLoader(
        dataset,
        config.training.micro_batch_size,
        train.num_workers,
        pin_memory=runtime.device.type == "cuda",
    )


def agree_on_empty_caption(config: TrainerConfig, runtime: Runtime) -> torch.Tensor | None:
    """Rank 0 loads it and every rank trains on that one: a fetch that failed on one node
    must not make its ranks learn another unconditional input. Kept on the device in fp32,
    uploaded once rather than every micro-batch."""
    if not config.data.train.precomputed_latents:
        return None
    loaded = load_empty_caption(config.data.train) if runtime.is_main else None
    agreed: torch.Tensor | None = broadcast_from_main(loaded, runtime)
    return None if agreed is None else agreed.to(runtime.device, torch.float32)


def build_components(config: TrainerConfig, runtime: Runtime) -> Components:
    unet = build_model(config, runtime)
    optimizer = build_optimizer(unet, config.training)
    ema_config = config.model.ema
    ema = (
        ShardedEma(unet, ema_config.decay, ema_config.start_step)
        if ema_config and ema_config.enabled
        else None
    )
    return Components(
        unet=unet,
        unet_config=dict(unet.config),
        optimizer=optimizer,
        lr_scheduler=build_lr_scheduler(optimizer, config.training),
        ema=ema,
        objective=DiffusionObjective(config.model, runtime.device),
        loader=build_loader(config, runtime),
        encoders=build_online_encoders(config, runtime),
        norm_group=shard_group(unet_mesh(unet)),
        empty_caption=agree_on_empty_caption(config, runtime),
    )
