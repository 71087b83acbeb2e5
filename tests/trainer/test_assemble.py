"""Assembling the trainer's components from a config: what the config turns on is built."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from diffusion_trainer.assemble import build_components
from diffusion_trainer.config import TrainerConfig
from diffusion_trainer.ema import ShardedEma


@pytest.mark.parametrize(
    ("ema", "expect_ema"), [({"decay": 0.9}, True), ({"enabled": False}, False)]
)
def test_ema_is_built_only_when_enabled(
    tmp_path: Path,
    world_of_one: Any,
    make_config: Callable[..., dict[str, Any]],
    ema: dict[str, Any],
    expect_ema: bool,
) -> None:
    raw = make_config(tmp_path / "ckpt", model={"unet": "tiny", "ema": ema})
    components = build_components(TrainerConfig.model_validate(raw), world_of_one)
    assert isinstance(components.ema, ShardedEma) is expect_ema
