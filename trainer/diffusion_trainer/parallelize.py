"""Make the U-Net fast and sharded: SDPA, activation checkpointing, per-block torch.compile,
then FSDP2 `fully_shard` per block and on the root (torchtitan's order).

channels_last is applied to the inputs, not the weights: FSDP2 shards only contiguous
parameters, and convolutions pick the NHWC kernels when either operand is channels_last, so
the layout propagates from the input through the whole network.
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from diffusion_trainer.config import TrainingConfig
from diffusion_trainer.model import DiffusersModel, use_sdpa_attention

PARAM_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def list_unet_blocks(unet: DiffusersModel) -> list[torch.nn.Module]:
    """The units that are sharded (and compiled) separately: each down, mid and up block."""
    blocks: list[torch.nn.Module] = [*unet.down_blocks]
    if unet.mid_block is not None:
        blocks.append(unet.mid_block)
    blocks.extend(unet.up_blocks)
    return blocks


def build_mixed_precision(precision: str) -> MixedPrecisionPolicy:
    """Compute in `precision`, keep fp32 master weights, reduce gradients in fp32."""
    return MixedPrecisionPolicy(param_dtype=PARAM_DTYPES[precision], reduce_dtype=torch.float32)


def compile_blocks(unet: DiffusersModel) -> None:
    # Static shapes: every step has the same micro-batch and latent size.
    for block in list_unet_blocks(unet):
        block.compile(dynamic=False)


def shard_unet(unet: DiffusersModel, mesh: DeviceMesh, precision: str) -> DiffusersModel:
    policy = build_mixed_precision(precision)
    for block in list_unet_blocks(unet):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(unet, mesh=mesh, mp_policy=policy)
    assert isinstance(unet, FSDPModule)
    return unet


def parallelize_unet(
    unet: DiffusersModel, training: TrainingConfig, mesh: DeviceMesh
) -> DiffusersModel:
    use_sdpa_attention(unet)
    if training.activation_checkpointing:
        unet.enable_gradient_checkpointing()
    if training.compile:
        compile_blocks(unet)
    return shard_unet(unet, mesh, training.precision)


def set_gradient_sync(model: torch.nn.Module, enabled: bool) -> None:
    """Whether the next backward reduce-scatters gradients (FSDP2; a no-op otherwise)."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)
