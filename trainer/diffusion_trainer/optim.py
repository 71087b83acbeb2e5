"""AdamW, the learning-rate schedule and gradient clipping for sharded parameters."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch.optim.adam import adam
from torch.optim.lr_scheduler import LambdaLR

from diffusion_trainer.config import TrainingConfig
from diffusion_trainer.ema import to_local
from diffusion_trainer.parallelize import list_unet_blocks


def build_param_groups(unet: torch.nn.Module) -> list[dict[str, Any]]:
    """One parameter group per sharded block, plus the root's own parameters.

    DTensor works out the sharding of a multi-tensor op from all its operands on first use,
    at a cost that grows faster than linearly with their number: small groups keep the first
    optimizer step fast (seconds instead of minutes on CPU)."""
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for block in list_unet_blocks(unet):
        params = [p for p in block.parameters() if p.requires_grad]
        seen.update(id(p) for p in params)
        groups.append({"params": params})
    rest = [p for p in unet.parameters() if p.requires_grad and id(p) not in seen]
    groups.append({"params": rest})
    return [group for group in groups if group["params"]]


class ShardLocalAdamW(torch.optim.AdamW):
    """AdamW applied to each rank's local shards of DTensor parameters.

    AdamW is elementwise, so updating the local shards of the parameters, gradients and
    moments is exactly the sharded update, with no communication. Going around DTensor
    dispatch skips its per-call sharding analysis of the fused multi-tensor op, which costs
    seconds on the first step and CPU time on every step. State stays DTensor, so
    checkpoints still reshard.

    `found_inf` (a float tensor on the device, 1.0 = skip) skips the step inside the fused
    kernel without a host sync: parameters, moments and step counts stay as they were.
    """

    @torch.no_grad()
    def step(self, closure: Any = None, *, found_inf: torch.Tensor | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            exp_avgs: list[torch.Tensor] = []
            exp_avg_sqs: list[torch.Tensor] = []
            max_exp_avg_sqs: list[torch.Tensor] = []
            state_steps: list[torch.Tensor] = []
            has_complex = self._init_group(
                group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps
            )
            if found_inf is not None and not group["fused"]:
                raise ValueError("found_inf needs the fused AdamW (fused=True)")
            beta1, beta2 = group["betas"]
            adam(
                local_shards(params),
                local_shards(grads),
                local_shards(exp_avgs),
                local_shards(exp_avg_sqs),
                local_shards(max_exp_avg_sqs),
                state_steps,
                amsgrad=group["amsgrad"],
                has_complex=has_complex,
                beta1=beta1,
                beta2=beta2,
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=group["maximize"],
                foreach=group["foreach"],
                capturable=group["capturable"],
                differentiable=group["differentiable"],
                fused=group["fused"],
                decoupled_weight_decay=True,
                grad_scale=None,
                found_inf=found_inf,
            )
        return loss


class SkipCounter:
    """Optimizer steps skipped for a non-finite gradient norm, counted on the device so that
    training never waits for the host; read only where the loop synchronises anyway."""

    def __init__(self, device: torch.device) -> None:
        self.streak = torch.zeros((), device=device)  # consecutive skips up to the last step
        self.worst_streak = torch.zeros((), device=device)  # longest streak so far
        self.total = torch.zeros((), device=device)

    @torch.no_grad()
    def record(self, skipped: torch.Tensor) -> None:
        """`skipped`: 1.0 if this step was skipped, else 0.0."""
        self.streak.add_(1.0).mul_(skipped)
        torch.maximum(self.worst_streak, self.streak, out=self.worst_streak)
        self.total.add_(skipped)

    def read(self) -> tuple[int, int]:
        """(total skips, longest streak); waits for the device."""
        total, worst = torch.stack([self.total, self.worst_streak]).tolist()
        return int(total), int(worst)


def local_shards(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [to_local(tensor) for tensor in tensors]


def build_optimizer(model: torch.nn.Module, training: TrainingConfig) -> ShardLocalAdamW:
    # The fused AdamW kernel exists for CUDA and CPU: one kernel per group, no per-tensor ops.
    return ShardLocalAdamW(
        build_param_groups(model),
        lr=training.lr,
        betas=training.betas,
        weight_decay=training.weight_decay,
        fused=True,
    )


def lr_multiplier(step: int, training: TrainingConfig) -> float:
    """Linear warmup over warmupSteps, then constant or cosine decay to 0 at maxSteps."""
    if step < training.warmup_steps:
        return (step + 1) / training.warmup_steps
    if training.lr_schedule == "constant":
        return 1.0
    decay_steps = max(1, training.max_steps - training.warmup_steps)
    progress = min(1.0, (step - training.warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_lr_scheduler(optimizer: torch.optim.Optimizer, training: TrainingConfig) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: lr_multiplier(step, training))


@torch.no_grad()
def clip_gradients(
    model: torch.nn.Module, max_norm: float | None, group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """Clip the global gradient norm (None: measure only); returns the norm before clipping,
    on the device, the same on every rank.

    Works on the local gradient shards: within `group` (the shard group; the world under
    FSDP) every parameter is sharded once, so the squared global norm is the sum over the
    group of the local squares. HSDP's replicas hold the same shards and are not counted."""
    grads = [to_local(p.grad) for p in model.parameters() if p.grad is not None]
    norms = torch._foreach_norm(grads, 2.0)
    total = torch.stack([norm.float() for norm in norms]).square().sum()
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(total, group=group)
    total = total.sqrt()
    if max_norm is None:
        return total
    coefficient = (max_norm / (total + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, coefficient.to(grads[0].dtype))
    return total
