"""Exponential moving average of the U-Net weights, sharded exactly like the model.

Each shadow is a DTensor with the parameter's placement, so a rank holds only its shard; the
update works on local shards and needs no communication. The state dict maps parameter names
to DTensors, which torch.distributed.checkpoint reshards on load like the model itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.distributed.tensor import DTensor


def to_local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class ShardedEma:
    def __init__(self, model: torch.nn.Module, decay: float, start_step: int) -> None:
        self.decay = decay
        self.start_step = start_step
        named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
        self.names = [name for name, _ in named]
        self.shadows = [param.detach().clone() for _, param in named]
        self._params = [param for _, param in named]

    def _local_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        shadows = [to_local(shadow) for shadow in self.shadows]
        params = [to_local(param.detach()) for param in self._params]
        return shadows, params

    @torch.no_grad()
    def copy_from_model(self) -> None:
        shadows, params = self._local_pairs()
        torch._foreach_copy_(shadows, params)

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the weights after optimizer step `step` (1-based); copy before startStep."""
        if step < self.start_step:
            self.copy_from_model()
            return
        shadows, params = self._local_pairs()
        torch._foreach_lerp_(shadows, params, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.shadows, strict=True))

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, shadow in zip(self.names, self.shadows, strict=True):
            to_local(shadow).copy_(to_local(state[name]))

    @contextmanager
    def swapped_into_model(self) -> Iterator[None]:
        """The EMA weights in the model inside the block (sampling), the trained ones after;
        costs one copy of this rank's shards."""
        with torch.no_grad():
            shadows, params = self._local_pairs()
            trained = [param.clone() for param in params]
            torch._foreach_copy_(params, shadows)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, trained)
