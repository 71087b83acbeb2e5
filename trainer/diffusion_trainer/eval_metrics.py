"""FID and CLIP score with torchmetrics, gathered across ranks by torchmetrics' own sync.

Images reach both metrics as uint8 [0, 255]: FID with `normalize=False` (torch-fidelity's
Inception resizes to 299 with its TF1-compatible bilinear resize), CLIP score through the CLIP
processor, which rescales by 1/255 itself (floats in [0, 1] would be rescaled twice, to near
black). Real-image FID statistics are held by rank 0 only, so torchmetrics' sum across ranks
counts them once; they are cached per eval dataset and reused by every later evaluation.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.multimodal.clip_score import CLIPScore
from transformers import CLIPModel, CLIPProcessor

from diffusion_trainer.checkpoint import join_uri, open_filesystem, write_bytes
from diffusion_trainer.encoders import load_component
from diffusion_trainer.fid_features import fid_feature_arguments

log = logging.getLogger("diffusion_trainer")
REAL_STATE_NAMES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


def load_clip(source: str) -> tuple[CLIPModel, CLIPProcessor]:
    """A CLIP model and its processor from a local folder or a hub id (HF_HUB_OFFLINE aware)."""
    model = load_component(CLIPModel, source, "")
    # The slow (PIL) image processor: the reference CLIP preprocessing, and what is saved.
    processor = load_component(CLIPProcessor, source, "", use_fast=False)
    return model.eval().requires_grad_(False), processor


def build_fid(source: str | None, device: torch.device) -> FrechetInceptionDistance:
    fid = FrechetInceptionDistance(
        reset_real_features=False, normalize=False, **fid_feature_arguments(source)
    )
    # Set by update() only: a rank whose share is all padding (numSamples < world size) would
    # fail compute() without it.
    fid.orig_dtype = torch.float32
    return fid.to(device)


def build_clip_score(source: str, device: torch.device) -> CLIPScore:
    model, processor = load_clip(source)
    return CLIPScore(model_name_or_path=lambda: (model, processor)).to(device)


def real_stats_key(description: dict[str, Any]) -> str:
    text = json.dumps(description, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class RealStatsCache:
    """Real-image FID statistics under `<root>/real-stats/<key>.pt` (local path or URI)."""

    root: str
    key: str

    @property
    def path(self) -> str:
        return join_uri(self.root, "real-stats", f"{self.key}.pt")

    def load(self) -> dict[str, torch.Tensor] | None:
        filesystem = open_filesystem(self.path)
        if not filesystem.exists(self.path):
            return None
        with filesystem.open(self.path, "rb") as handle:
            state: dict[str, torch.Tensor] = torch.load(io.BytesIO(handle.read()))
        return state

    def save(self, state: dict[str, torch.Tensor]) -> None:
        buffer = io.BytesIO()
        torch.save({name: value.cpu() for name, value in state.items()}, buffer)
        write_bytes(self.path, buffer.getvalue())


def real_state(fid: FrechetInceptionDistance) -> dict[str, torch.Tensor]:
    return {name: getattr(fid, name).detach().clone() for name in REAL_STATE_NAMES}


def set_real_state(fid: FrechetInceptionDistance, state: dict[str, torch.Tensor]) -> None:
    for name in REAL_STATE_NAMES:
        getattr(fid, name).copy_(state[name].to(getattr(fid, name).device))


def gather_real_stats_on_main(fid: FrechetInceptionDistance, is_main: bool) -> None:
    """Sum every rank's real statistics into rank 0 and zero them elsewhere."""
    for name in REAL_STATE_NAMES:
        tensor = getattr(fid, name)
        dist.reduce(tensor, dst=0)
        if not is_main:
            tensor.zero_()


def clear_real_stats(fid: FrechetInceptionDistance) -> None:
    for name in REAL_STATE_NAMES:
        getattr(fid, name).zero_()
