"""Learning-rate schedules and gradient clipping on sharded gradients."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from diffusion_trainer.config import TrainingConfig
from diffusion_trainer.optim import clip_gradients, lr_multiplier


@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [
        ("constant", 0, 0.1),  # first of 10 warmup steps
        ("constant", 9, 1.0),
        ("constant", 90, 1.0),
        ("cosine", 10, 1.0),  # warmup done: the cosine starts at the peak
        ("cosine", 55, 0.5),  # half way through the decay
        ("cosine", 100, 0.0),  # maxSteps
    ],
)
def test_lr_schedule(schedule: str, step: int, expected: float) -> None:
    training = TrainingConfig(warmup_steps=10, max_steps=100, lr_schedule=schedule)
    assert lr_multiplier(step, training) == pytest.approx(expected, abs=1e-6)


def test_clipping_matches_torch_on_sharded_gradients(world_of_one: Any) -> None:
    torch.manual_seed(0)
    sharded = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Linear(16, 2))
    plain = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Linear(16, 2))
    plain.load_state_dict(sharded.state_dict())
    fully_shard(sharded, mesh=world_of_one.mesh)
    inputs = torch.randn(8, 4) * 10
    for model in (sharded, plain):
        model(inputs).square().sum().backward()
    norm = clip_gradients(sharded, max_norm=0.5)
    expected = torch.nn.utils.clip_grad_norm_(plain.parameters(), max_norm=0.5)
    assert norm is not None and norm.item() == pytest.approx(expected.item(), rel=1e-5)
    assert norm.item() > 0.5  # it did clip
    for ours, reference in zip(sharded.parameters(), plain.parameters(), strict=True):
        assert isinstance(ours.grad, DTensor) and reference.grad is not None
        assert torch.allclose(ours.grad.full_tensor(), reference.grad, atol=1e-6)
    clipped = [p.grad.full_tensor().clone() for p in sharded.parameters()]
    measured = clip_gradients(sharded, max_norm=None)  # measures only
    assert measured.item() == pytest.approx(0.5, rel=1e-4)
    for grad, param in zip(clipped, sharded.parameters(), strict=True):
        assert torch.equal(param.grad.full_tensor(), grad)
