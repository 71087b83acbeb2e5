"""GPU tier: real CUDA steps of the trainer. Never in CI; `make bench-gpu` runs it first on a
GPU machine (tools/gpu/bench_gpu.sh)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "tests/gpu/" in str(item.path):
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(no_gpu)


@pytest.fixture(scope="session")
def latent_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MDS shards of random tiny-U-Net latents (8 x 8 x 4) and text states (77 x 64)."""
    from bench.bench_support import write_latent_dataset

    return write_latent_dataset(tmp_path_factory.mktemp("latents"), 256, 8, 64)


@pytest.fixture
def gpu_config(latent_data: Path, tmp_path: Path) -> Callable[..., dict[str, Any]]:
    def make(**training: Any) -> dict[str, Any]:
        return {
            "model": {"unet": "tiny", "ema": {"decay": 0.99}},
            "data": {
                "train": {"local": str(latent_data), "resolution": 64, "numWorkers": 2},
            },
            "training": {
                "globalBatchSize": 16,
                "microBatchSize": 8,
                "maxSteps": 6,
                "warmupSteps": 0,
                "lr": 1e-4,
                "logIntervalSteps": 1,
                "seed": 5,
                **training,
            },
            "checkpoint": {"uri": str(tmp_path / "ckpt"), "intervalSteps": 3},
            "eval": {"intervalSteps": 0},
            "metrics": {"enabled": False},
        }

    return make
