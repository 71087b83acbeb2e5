"""The image features FID is computed on.

Production uses torch-fidelity's Inception-v3 (torchmetrics' default, 2048 features), from a
local weights file or fetched once into the torch hub cache. Where no Inception weights can be
loaded (tests, the local demo), a small convolutional network with fixed random weights stands
in: random features still separate distributions (FID of a set against itself is ~0, against a
different set it is large), but the numbers are not comparable with published FIDs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional

TINY_CONFIG_FILE = "fid_features.json"
TINY_WEIGHTS_FILE = "model.safetensors"
TINY_INPUT_SIZE = 64
INCEPTION_NUM_FEATURES = 2048
# Pooled random-conv features vary by ~0.01; scaling them by 100 (FID by 10^4) puts tiny-model
# FIDs in the familiar range of tens instead of thousandths.
TINY_FEATURE_GAIN = 100.0


class TinyFidFeatures(nn.Module):
    """uint8 images [B, 3, H, W] to `num_features` pooled conv features."""

    def __init__(self, num_features: int = 64) -> None:
        super().__init__()
        self.num_features = num_features
        self.layers = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(32, num_features, 3, stride=2, padding=1),
            nn.GELU(),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.float() / 127.5 - 1.0
        pixels = functional.interpolate(
            pixels, size=(TINY_INPUT_SIZE, TINY_INPUT_SIZE), mode="bilinear", antialias=True
        )
        features: torch.Tensor = self.layers(pixels).mean(dim=(2, 3))
        return features * TINY_FEATURE_GAIN


def write_tiny_fid_features(out_dir: Path, seed: int, num_features: int = 64) -> Path:
    """Save a seeded TinyFidFeatures as a folder `eval.fidFeatureExtractor` can name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    module = TinyFidFeatures(num_features)
    save_file(module.state_dict(), str(out_dir / TINY_WEIGHTS_FILE))
    (out_dir / TINY_CONFIG_FILE).write_text(json.dumps({"numFeatures": num_features}))
    return out_dir


def load_tiny_fid_features(folder: Path) -> TinyFidFeatures:
    config = json.loads((folder / TINY_CONFIG_FILE).read_text())
    module = TinyFidFeatures(int(config["numFeatures"]))
    module.load_state_dict(load_file(str(folder / TINY_WEIGHTS_FILE)))
    return module.eval().requires_grad_(False)


def fid_feature_arguments(source: str | None) -> dict[str, Any]:
    """FrechetInceptionDistance keyword arguments for `eval.fidFeatureExtractor`."""
    if source is None:
        return {"feature": INCEPTION_NUM_FEATURES}
    path = Path(source).expanduser()
    if (path / TINY_CONFIG_FILE).is_file():
        return {"feature": load_tiny_fid_features(path)}
    if not path.is_file():
        raise FileNotFoundError(
            f"eval.fidFeatureExtractor={source!r} is neither an Inception weights file nor a "
            f"folder with {TINY_CONFIG_FILE}; stage pt_inception-2015-12-05-6726825d.pth there"
        )
    return {"feature": INCEPTION_NUM_FEATURES, "feature_extractor_weights_path": str(path)}


def describe_features(source: str | None) -> str:
    """What produced the features, for the stats cache key and the report."""
    if source is None:
        return "inception-v3-torch-fidelity"
    path = Path(source).expanduser()
    weights = path / TINY_WEIGHTS_FILE if path.is_dir() else path
    size = weights.stat().st_size if weights.is_file() else 0
    return f"{path.resolve()}:{size}"
