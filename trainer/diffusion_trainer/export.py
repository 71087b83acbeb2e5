"""Export the trained U-Net (and its EMA) as diffusers folders.

Full weights are gathered on rank 0 only (the others take part in the gathers and discard),
then written with `save_pretrained`, so `UNet2DConditionModel.from_pretrained(<dir>/unet)`
loads them. The DDPM scheduler config used in training is written next to them (scheduler/),
so a `StableDiffusionPipeline` assembled from these folders samples with the same schedule.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, cast

import torch
from diffusers import UNet2DConditionModel
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor

from diffusion_trainer.checkpoint import has_scheme, join_uri, open_filesystem
from diffusion_trainer.distributed import Runtime, barrier
from diffusion_trainer.ema import ShardedEma

EXPORT_DIR = "export"


def export_path(uri: str, step: int) -> str:
    return join_uri(uri, EXPORT_DIR, f"step-{step:08d}")


def gather_full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return cast(dict[str, torch.Tensor], get_model_state_dict(model, options=options))


def gather_ema_state(ema: ShardedEma, runtime: Runtime) -> dict[str, torch.Tensor]:
    full = {}
    for name, shadow in ema.state_dict().items():
        tensor = shadow.full_tensor() if isinstance(shadow, DTensor) else shadow
        if runtime.is_main:
            full[name] = tensor.detach().cpu()
    return full


def save_unet(config: dict[str, Any], state: dict[str, torch.Tensor], folder: Path) -> None:
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    unet.load_state_dict(state, assign=True, strict=True)
    unet.save_pretrained(str(folder), safe_serialization=True)


def write_export(
    folder: Path,
    config: dict[str, Any],
    weights: dict[str, torch.Tensor],
    ema_weights: dict[str, torch.Tensor] | None,
    scheduler: Any,
) -> None:
    save_unet(config, weights, folder / "unet")
    if ema_weights is not None:
        save_unet(config, ema_weights, folder / "unet_ema")
    scheduler.save_pretrained(str(folder / "scheduler"))


def export_diffusers(
    model: Any,
    ema: ShardedEma | None,
    scheduler: Any,
    destination: str,
    runtime: Runtime,
) -> str:
    """Write unet/ (+ unet_ema/) and scheduler/ under `destination` (a collective)."""
    config = dict(model.config)
    weights = gather_full_state(model)
    ema_weights = gather_ema_state(ema, runtime) if ema is not None else None
    if runtime.is_main:
        if has_scheme(destination):
            with tempfile.TemporaryDirectory() as staging:
                write_export(Path(staging), config, weights, ema_weights, scheduler)
                open_filesystem(destination).put(staging + "/", destination, recursive=True)
        else:
            write_export(Path(destination), config, weights, ema_weights, scheduler)
    barrier(runtime)
    return destination
