"""Export the trained U-Net as a diffusers StableDiffusionPipeline folder.

Layout of `<checkpoint.uri>/export/step-<N>/`, loadable with
`StableDiffusionPipeline.from_pretrained(<dir>)`:
  model_index.json   StableDiffusionPipeline, no safety checker or feature extractor
  unet/              the EMA weights when EMA is on (what to sample with), else the trained ones
  unet_noema/        the trained weights, only when EMA is on
  scheduler/         DDIM on the training betas and prediction type
  vae/, text_encoder/, tokenizer/   copied from model.vae / model.textEncoder / model.pretrained
Without a VAE or text-encoder source (a latents-only run) only unet/ (+ unet_noema/) and
scheduler/ are written, and a warning names the fields to set.

Full weights are gathered on rank 0 only (the others take part in the gathers and discard);
rank 0 writes, staging locally and uploading with fsspec for remote (s3://, gs://) URIs.
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor

from diffusion_trainer.checkpoint import has_scheme, join_uri, open_filesystem
from diffusion_trainer.config import ModelConfig
from diffusion_trainer.distributed import Runtime, barrier
from diffusion_trainer.ema import ShardedEma
from diffusion_trainer.pipeline_export import write_pipeline_folder

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


def export_diffusers(
    model: Any,
    ema: ShardedEma | None,
    model_config: ModelConfig,
    destination: str,
    runtime: Runtime,
) -> str:
    """Write the pipeline folder (module docstring) at `destination` (a collective)."""
    unet_config = dict(model.config)
    weights = gather_full_state(model)
    ema_weights = gather_ema_state(ema, runtime) if ema is not None else None
    if runtime.is_main:
        write = partial(
            write_pipeline_folder,
            unet_config=unet_config,
            weights=weights,
            ema_weights=ema_weights,
            model=model_config,
        )
        if has_scheme(destination):
            with tempfile.TemporaryDirectory() as staging:
                write(Path(staging))
                open_filesystem(destination).put(staging + "/", destination, recursive=True)
        else:
            write(Path(destination))
    barrier(runtime)
    return destination
