"""Make the U-Net fast and sharded: SDPA, activation checkpointing, per-unit torch.compile,
then FSDP2 `fully_shard` per unit, per block and on the root (torchtitan's order).

On a 1-D mesh that is FSDP; on a 2-D (replicate, shard) mesh `fully_shard` is HSDP: shards
within a node, gradients all-reduced across the replicas.

Units are each ResNet and transformer layer (`fsdpUnits: layers`; SD2's largest up block alone
holds 30% of the weights, too coarse to overlap its all-gather with compute) or each
down/mid/up block. With `reshardAfterForward: false` the gathered weights stay from the first
forward of a step to its last backward: one all-gather per optimizer step, as MosaicML's
SHARD_GRAD_OP, instead of two per micro-batch.

channels_last is applied to the inputs, not the weights: FSDP2 shards only contiguous
parameters, and convolutions pick the NHWC kernels when either operand is channels_last, so
the layout propagates from the input through the whole network.
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

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


def list_block_layers(block: torch.nn.Module) -> list[torch.nn.Module]:
    """A block's ResNet and transformer layers (its up/downsamplers stay with the block)."""
    layers: list[torch.nn.Module] = list(getattr(block, "resnets", None) or [])
    layers.extend(getattr(block, "attentions", None) or [])
    return layers


def list_compile_units(unet: DiffusersModel, granularity: str) -> list[torch.nn.Module]:
    if granularity == "blocks":
        return list_unet_blocks(unet)
    return [layer for block in list_unet_blocks(unet) for layer in list_block_layers(block)]


def list_shard_units(unet: DiffusersModel, granularity: str) -> list[torch.nn.Module]:
    """Inner units before the blocks that hold them (fully_shard goes bottom-up)."""
    if granularity == "blocks":
        return list_unet_blocks(unet)
    return [unit for block in list_unet_blocks(unet) for unit in (*list_block_layers(block), block)]


def build_mixed_precision(precision: str) -> MixedPrecisionPolicy:
    """Compute in `precision`, keep fp32 master weights, reduce gradients in fp32."""
    return MixedPrecisionPolicy(param_dtype=PARAM_DTYPES[precision], reduce_dtype=torch.float32)


def allow_recompiles(num_units: int) -> None:
    """Let Dynamo keep a graph for every unit. All ResNet layers share one `forward` code
    object, and so do all transformer layers; past the default limit of 8 shapes per code
    object Dynamo silently runs the remaining layers eagerly."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, num_units)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * num_units)


def compile_units(
    unet: DiffusersModel, granularity: str, mode: str = "default", backend: str = "inductor"
) -> None:
    units = list_compile_units(unet, granularity)
    allow_recompiles(len(units))
    # Static shapes: every step has the same micro-batch and latent size.
    options = {"mode": mode} if backend == "inductor" else {}
    for unit in units:
        unit.compile(dynamic=False, backend=backend, **options)


def shard_unet(unet: DiffusersModel, mesh: DeviceMesh, training: TrainingConfig) -> DiffusersModel:
    policy = build_mixed_precision(training.precision)
    for unit in list_shard_units(unet, training.fsdp_units):
        fully_shard(
            unit,
            mesh=mesh,
            mp_policy=policy,
            reshard_after_forward=training.reshard_after_forward,
        )
    # The root's weights (conv_in, time embedding, conv_out) are needed again at once in the
    # backward: freeing them after the forward would only gather them again.
    fully_shard(unet, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    assert isinstance(unet, FSDPModule)
    return unet


def parallelize_unet(
    unet: DiffusersModel, training: TrainingConfig, mesh: DeviceMesh
) -> DiffusersModel:
    use_sdpa_attention(unet)
    if training.activation_checkpointing:
        unet.enable_gradient_checkpointing()
    if training.compile:
        compile_units(unet, training.fsdp_units, training.compile_mode)
    return shard_unet(unet, mesh, training)


def unet_mesh(unet: torch.nn.Module) -> DeviceMesh:
    """The device mesh the sharded U-Net's parameters live on."""
    param = next(unet.parameters())
    assert isinstance(param, DTensor), "the U-Net is not sharded"
    return param.device_mesh


def set_micro_batch_mode(model: torch.nn.Module, is_last: bool, keep_gathered: bool) -> None:
    """Reduce-scatter gradients only in the last micro-batch's backward (one unsharded fp32
    gradient copy of memory); with `keep_gathered`, free the gathered weights only then too."""
    if not isinstance(model, FSDPModule):
        return
    model.set_requires_gradient_sync(is_last)
    if keep_gathered:
        model.set_reshard_after_backward(is_last)


def reshard_everywhere(model: torch.nn.Module) -> None:
    """Free every gathered weight, so the next forward gathers the sharded values afresh (after
    the shards were written directly, e.g. the EMA swapped in for sampling)."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
