"""Checkpoint storage: commit markers, pruning, resume resolution, fsspec URIs, EMA sharding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from diffusion_trainer.checkpoint import (
    CheckpointStorageError,
    CheckpointStore,
    TrainState,
    load_checkpoint,
    open_filesystem,
    resolve_resume_path,
    save_checkpoint,
)
from diffusion_trainer.ema import ShardedEma
from diffusion_trainer.optim import ShardLocalAdamW


def full(tensor: torch.Tensor) -> torch.Tensor:
    assert isinstance(tensor, DTensor)
    return tensor.full_tensor()


def make_step_dir(root: Path, step: int, committed: bool) -> Path:
    path = root / f"step-{step:08d}"
    path.mkdir(parents=True)
    (path / ".metadata").write_text("")
    if committed:
        (path / ".committed").write_text(json.dumps({"step": step}))
    return path


def test_latest_committed_ignores_unfinished_saves(tmp_path: Path) -> None:
    for step, committed in [(100, True), (200, True), (300, False), (50, False)]:
        make_step_dir(tmp_path, step, committed)
    (tmp_path / "export").mkdir()
    store = CheckpointStore(str(tmp_path))
    assert store.committed_steps() == [100, 200]
    assert store.latest_committed() == str(tmp_path / "step-00000200")
    assert resolve_resume_path(store, None) == str(tmp_path / "step-00000200")
    # A stale RESUME_FROM never rolls back progress committed under the job's own URI.
    assert resolve_resume_path(store, str(tmp_path / "step-00000100")) == str(
        tmp_path / "step-00000200"
    )
    fresh = CheckpointStore(str(tmp_path / "next-stage"))
    assert resolve_resume_path(fresh, str(tmp_path / "step-00000100")) == str(
        tmp_path / "step-00000100"
    )
    with pytest.raises(CheckpointStorageError, match="neither a committed checkpoint"):
        resolve_resume_path(store, str(tmp_path / "step-00000300"))
    assert resolve_resume_path(CheckpointStore(str(tmp_path / "empty")), None) is None


def test_prune_keeps_the_newest_committed(tmp_path: Path) -> None:
    for step, committed in [(1, True), (2, False), (3, True), (4, True), (5, False)]:
        make_step_dir(tmp_path, step, committed)
    store = CheckpointStore(str(tmp_path))
    assert store.prune(keep_last=2) == [1, 2]
    # The unfinished save newer than the newest committed one may still be in progress.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step-00000003",
        "step-00000004",
        "step-00000005",
    ]


def test_missing_fsspec_backend_is_a_clear_error() -> None:
    # Azure's backend is not in the image (s3fs and gcsfs are).
    with pytest.raises(CheckpointStorageError, match="adlfs"):
        open_filesystem("abfs://container/ckpt")


def build_sharded(runtime: Any, seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A small FSDP2 model (per-layer shards, then the root) and its optimizer."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.SiLU(), torch.nn.Linear(8, 3))
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=runtime.mesh)
    fully_shard(model, mesh=runtime.mesh)
    return model, ShardLocalAdamW(model.parameters(), lr=0.1, fused=True)


def test_round_trip_through_an_fsspec_uri(tmp_path: Path, world_of_one: Any) -> None:
    """A `file://` URI goes through DCP's fsspec writer/reader, as s3:// and gs:// do."""
    unet, optimizer = build_sharded(world_of_one, seed=0)
    ema = ShardedEma(unet, decay=0.5, start_step=0)
    assert all(isinstance(shadow, DTensor) for shadow in ema.shadows)  # sharded like the model
    for param in unet.parameters():
        param.grad = torch.ones_like(param)
    optimizer.step()
    ema.update(step=1)
    uri = f"file://{tmp_path}/ckpt"
    store = CheckpointStore(uri)
    state = TrainState(
        step=3,
        lr_scheduler={"last_epoch": 3},
        data={"epoch": 0},
        seed=1,
        world_size=1,
        has_ema=True,
    )
    path = save_checkpoint(store, state, unet, optimizer, ema, runtime=world_of_one, keep_last=2)
    assert path == f"{uri}/step-00000003"
    assert store.committed_steps() == [3]

    fresh, fresh_optimizer = build_sharded(world_of_one, seed=1)
    fresh_ema = ShardedEma(fresh, decay=0.5, start_step=0)
    restored = load_checkpoint(store, path, fresh, fresh_optimizer, fresh_ema)
    assert restored == state
    for (name, a), b in zip(unet.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(full(a), full(b)), name
    for a, b in zip(ema.shadows, fresh_ema.shadows, strict=True):
        assert torch.equal(full(a), full(b))
    saved_moments = optimizer.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["exp_avg"], saved_moments)


def test_shard_local_adamw_matches_torch_adamw(world_of_one: Any) -> None:
    model, optimizer = build_sharded(world_of_one, seed=4)
    torch.manual_seed(4)
    plain = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.SiLU(), torch.nn.Linear(8, 3))
    reference = torch.optim.AdamW(plain.parameters(), lr=0.1)
    inputs = torch.randn(5, 6)
    for _ in range(3):
        for net, opt in ((model, optimizer), (plain, reference)):
            net(inputs).square().mean().backward()
            opt.step()
            opt.zero_grad()
    for sharded, expected in zip(model.parameters(), plain.parameters(), strict=True):
        assert torch.allclose(full(sharded), expected, atol=1e-6)
