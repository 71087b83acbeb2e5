"""Process group, device and device mesh for one worker, under torchrun or alone.

A lone process (no RANK in the environment) still gets a world-size-1 process group, so 1- and
N-process runs take the same code path (FSDP2, DCP, collectives).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from diffusion_trainer.config import TrainingConfig, resolve_hsdp_shard_size
from diffusion_trainer.preflight import env_local_world_size


@dataclass
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mesh: DeviceMesh
    # CPU (gloo) group for small control messages, so they never wait on the GPU stream.
    control_group: dist.ProcessGroup

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def select_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def collective_timeout() -> timedelta:
    """DTJ_COLLECTIVE_TIMEOUT_S (set by the operator), else torch's default of 10 minutes."""
    return timedelta(seconds=float(os.environ.get("DTJ_COLLECTIVE_TIMEOUT_S", "600")))


def init_runtime() -> Runtime:
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(local_rank)
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    timeout = collective_timeout()
    if "RANK" in os.environ:
        device_id = device if device.type == "cuda" else None
        dist.init_process_group(backend, timeout=timeout, device_id=device_id)
    else:
        store = dist.HashStore()
        dist.init_process_group(backend, store=store, rank=0, world_size=1, timeout=timeout)
    world_size = dist.get_world_size()
    control_group: Any = dist.group.WORLD
    if device.type == "cuda":
        control_group = dist.new_group(backend="gloo", timeout=timeout)
    assert isinstance(control_group, dist.ProcessGroup)
    return Runtime(
        rank=dist.get_rank(),
        world_size=world_size,
        local_rank=local_rank,
        device=device,
        mesh=init_device_mesh(device.type, (world_size,)),
        control_group=control_group,
    )


def build_training_mesh(runtime: Runtime, training: TrainingConfig) -> DeviceMesh:
    """The mesh the U-Net is sharded over: the world (fsdp), or replicas of shard groups of
    consecutive ranks, which torchrun places on one node (hsdp)."""
    if training.sharding == "fsdp":
        return runtime.mesh
    shard_size = resolve_hsdp_shard_size(training, runtime.world_size, env_local_world_size())
    return init_device_mesh(
        runtime.device.type,
        (runtime.world_size // shard_size, shard_size),
        mesh_dim_names=("replicate", "shard"),
    )


def shard_group(mesh: DeviceMesh) -> dist.ProcessGroup:
    """The ranks that hold distinct shards of each parameter (replicas hold copies)."""
    group = mesh["shard"].get_group() if mesh.ndim == 2 else mesh.get_group()
    assert isinstance(group, dist.ProcessGroup)
    return group


def shutdown_runtime() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def any_rank_true(flag: bool, runtime: Runtime) -> bool:
    """True on every rank if `flag` is true on at least one (a collective)."""
    tensor = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=runtime.control_group)
    return bool(tensor.item())


class StopVote:
    """Whether any rank asked to stop, agreed without a wait in every step: each poll starts
    an async all-reduce of this rank's flag on the control group and reads the one started at
    the previous poll (finished a whole step ago). Every rank sees the same answer at the same
    poll, one step after the request; a lone process answers at once."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.pending: tuple[Any, torch.Tensor] | None = None

    def poll(self, requested: bool) -> bool:
        if self.runtime.world_size == 1:
            return requested
        flag = torch.tensor([int(requested)], dtype=torch.int32)
        work = dist.all_reduce(
            flag, op=dist.ReduceOp.MAX, group=self.runtime.control_group, async_op=True
        )
        previous, self.pending = self.pending, (work, flag)
        if previous is None:
            return False
        previous[0].wait()
        return bool(previous[1].item())


def broadcast_from_main(value: Any, runtime: Runtime) -> Any:
    """Rank 0's `value` on every rank (a collective over the CPU control group)."""
    if runtime.world_size == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0, group=runtime.control_group)
    return holder[0]


def barrier(runtime: Runtime) -> None:
    dist.barrier(group=runtime.control_group)


def mean_across_ranks(value: torch.Tensor) -> float:
    """Average of a scalar tensor over all ranks (on its device's default group)."""
    total = value.detach().float().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return float(total.item()) / dist.get_world_size()


def sum_across_ranks(values: torch.Tensor) -> list[float]:
    """Element-wise sums of a small tensor over all ranks (on its device's default group)."""
    total = values.detach().float().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return [float(value) for value in total.tolist()]
