"""FSDP2 units and resharding: weights stay gathered through a step's micro-batches and are
freed after its last backward."""

from __future__ import annotations

from typing import Any

import torch
from torch._dynamo.utils import counters
from torch.distributed.tensor import DTensor

from diffusion_trainer.config import TrainingConfig
from diffusion_trainer.model import build_unet, load_unet_config
from diffusion_trainer.parallelize import (
    compile_units,
    list_compile_units,
    list_shard_units,
    parallelize_unet,
    reshard_everywhere,
    set_micro_batch_mode,
)


def tiny_sharded_unet(runtime: Any, **training: Any) -> Any:
    torch.manual_seed(0)
    unet = build_unet(load_unet_config("tiny", resolution=64))
    config = TrainingConfig(precision="fp32", **training)
    return parallelize_unet(unet, config, runtime.mesh)


def forward_backward(unet: Any) -> None:
    latents = torch.randn(2, 4, 8, 8)
    text = torch.randn(2, 77, 64)
    unet(latents, torch.tensor([10, 500]), text).sample.square().mean().backward()


def is_gathered(module: torch.nn.Module) -> bool:
    return not isinstance(next(module.parameters()), DTensor)


def test_layer_units_cover_every_resnet_and_transformer_before_their_block(
    world_of_one: Any,
) -> None:
    unet = build_unet(load_unet_config("tiny", resolution=64))
    units = list_shard_units(unet, "layers")
    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        for layer in [*block.resnets, *(getattr(block, "attentions", None) or [])]:
            assert units.index(layer) < units.index(block)
    assert list_shard_units(unet, "blocks") == [*unet.down_blocks, unet.mid_block, *unet.up_blocks]


def test_weights_stay_gathered_until_the_last_micro_batch(world_of_one: Any) -> None:
    unet = tiny_sharded_unet(world_of_one)
    layer = unet.up_blocks[1].resnets[0]
    set_micro_batch_mode(unet, is_last=False, keep_gathered=True)
    forward_backward(unet)
    assert is_gathered(layer)  # the next micro-batch needs no all-gather
    set_micro_batch_mode(unet, is_last=True, keep_gathered=True)
    forward_backward(unet)
    assert not is_gathered(layer)  # freed after the step's last backward
    with torch.no_grad():
        unet(torch.randn(1, 4, 8, 8), torch.tensor([1]), torch.randn(1, 77, 64))
    assert is_gathered(layer)  # a forward without backward (sampling) keeps them ...
    reshard_everywhere(unet)
    assert not is_gathered(layer)  # ... until freed explicitly


def test_resharding_after_forward_frees_weights_between_forward_and_backward(
    world_of_one: Any,
) -> None:
    unet = tiny_sharded_unet(world_of_one, reshard_after_forward=True)
    layer = unet.up_blocks[1].resnets[0]
    set_micro_batch_mode(unet, is_last=False, keep_gathered=False)
    forward_backward(unet)
    assert not is_gathered(layer)


def test_every_sd2_layer_keeps_its_compiled_graph() -> None:
    """SD-2-base's 38 layers share two `forward` code objects in many shapes; none may fall
    back to eager at Dynamo's recompile limit (tracing only: the eager backend)."""
    torch._dynamo.reset()
    counters.clear()
    unet = build_unet(load_unet_config("sd2-base", resolution=64))
    compile_units(unet, "layers", backend="eager")
    with torch.no_grad():
        unet(torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 77, 1024))
    frames = counters["frames"]
    assert len(list_compile_units(unet, "layers")) == 38
    assert frames["total"] == frames["ok"] > 8, dict(frames)
    torch._dynamo.reset()
