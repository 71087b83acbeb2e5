"""Sharded checkpoints with torch.distributed.checkpoint (DCP), committed by a marker file.

Layout under `checkpoint.uri` (a local/PVC path, or s3://, gs://, any fsspec URL):

    step-00001000/            one checkpoint: DCP shards + .metadata
        trainer_state.json    step, LR schedule, data-loader position, seed, world size
        .committed            written by rank 0 last, after every shard is on storage
        .rolled-back          a rollback uncommitted it (the reason inside); pruned later
    export/step-00002000/     diffusers folders (see export.py)

Only directories holding `.committed` count; anything else is a save that did not finish.
DCP stores DTensor shards with their global layout, so a checkpoint written at one world size
loads at another.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import torch
import torch.distributed.checkpoint as dcp
from fsspec.implementations.local import LocalFileSystem
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from diffusion_trainer.distributed import Runtime, barrier
from diffusion_trainer.ema import ShardedEma
from diffusion_trainer.fault_injection import delay_commit_for_fault_tests

COMMIT_MARKER = ".committed"
ROLLBACK_MARKER = ".rolled-back"
TRAINER_STATE_FILE = "trainer_state.json"
STEP_DIR_PATTERN = re.compile(r"^step-(\d{8})$")
FSSPEC_PACKAGES = {
    "s3": "s3fs",
    "s3a": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "az": "adlfs",
    "abfs": "adlfs",
}


class CheckpointStorageError(RuntimeError):
    """The checkpoint location cannot be used (missing fsspec backend, nothing to resume)."""


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def has_scheme(uri: str) -> bool:
    return "://" in uri


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def open_filesystem(uri: str) -> fsspec.AbstractFileSystem:
    if not has_scheme(uri):
        return LocalFileSystem()
    scheme = uri.split("://", 1)[0]
    try:
        fs, _ = fsspec.core.url_to_fs(uri)
    except ImportError as error:
        package = FSSPEC_PACKAGES.get(scheme, f"the fsspec backend for {scheme}://")
        raise CheckpointStorageError(
            f"checkpoint.uri={uri!r} needs {package}, which is not installed in this image; "
            f"install it (pip install {package}) or use a local/PVC path"
        ) from error
    return fs


def write_bytes(uri: str, payload: bytes) -> None:
    """One file at a local path (parent folders made) or an fsspec URI."""
    filesystem = open_filesystem(uri)
    if not has_scheme(uri):
        filesystem.makedirs(str(Path(uri).parent), exist_ok=True)
    with filesystem.open(uri, "wb") as handle:
        handle.write(payload)


@dataclass
class TrainState:
    """Everything a checkpoint restores besides the tensors."""

    step: int
    lr_scheduler: dict[str, Any]
    data: dict[str, Any] | None
    seed: int
    world_size: int
    has_ema: bool
    # Steps of data skipped by DTJ_DATA_SKIP_TO_STEP so far: the loader reads the batches of
    # step `step + data_step_offset` of the job's first pass.
    data_step_offset: int = 0


class CheckpointStore:
    """Listing, committing and pruning step directories under one URI."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self.fs = open_filesystem(self.uri)

    def path_for(self, step: int) -> str:
        return join_uri(self.uri, step_dir_name(step))

    def is_committed(self, path: str) -> bool:
        return bool(self.fs.exists(join_uri(path, COMMIT_MARKER)))

    def list_steps(self) -> dict[int, str]:
        if not self.fs.exists(self.uri):
            return {}
        steps = {}
        for entry in self.fs.ls(self.uri, detail=False):
            match = STEP_DIR_PATTERN.match(str(entry).rstrip("/").rsplit("/", 1)[-1])
            if match:
                steps[int(match.group(1))] = self.path_for(int(match.group(1)))
        return steps

    def committed_steps(self) -> list[int]:
        return sorted(s for s, path in self.list_steps().items() if self.is_committed(path))

    def latest_committed(self) -> str | None:
        steps = self.committed_steps()
        return self.path_for(steps[-1]) if steps else None

    def write_json(self, path: str, payload: dict[str, Any]) -> None:
        """Durable before it returns: the commit marker must never reach the disk before the
        state it vouches for (a node crash would leave a marker next to an empty file).
        Object stores make a whole object visible at once; a local/PVC file is fsynced."""
        text = json.dumps(payload, indent=1)
        if not isinstance(self.fs, LocalFileSystem):
            with self.fs.open(path, "w") as handle:
                handle.write(text)
            return
        with Path(self.fs._strip_protocol(path)).open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    def read_json(self, path: str) -> dict[str, Any]:
        with self.fs.open(path, "r") as handle:
            payload: dict[str, Any] = json.loads(handle.read())
        return payload

    def uncommit(self, path: str, reason: str) -> None:
        """Turn a committed checkpoint into an unfinished save that says why: never resumed
        from, replaced by a new save of its step, pruned once a newer one commits."""
        payload = {"reason": reason, "time": time.time()}
        self.write_json(join_uri(path, ROLLBACK_MARKER), payload)
        self.fs.rm(join_uri(path, COMMIT_MARKER))

    def remove(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def prune(self, keep_last: int) -> list[int]:
        """Delete all but the newest `keep_last` committed checkpoints, and unfinished saves
        older than the newest committed one; returns the steps deleted."""
        steps = self.list_steps()
        committed = sorted(s for s, p in steps.items() if self.is_committed(p))
        if not committed:
            return []
        keep = set(committed[-keep_last:])
        doomed = [s for s in steps if s not in keep and s < committed[-1]]
        for step in doomed:
            self.remove(steps[step])
        return sorted(doomed)


def make_writer(path: str) -> dcp.StorageWriter:
    return FsspecWriter(path) if has_scheme(path) else dcp.FileSystemWriter(path)


def make_reader(path: str) -> dcp.StorageReader:
    return FsspecReader(path) if has_scheme(path) else dcp.FileSystemReader(path)


def collect_tensor_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, ema: ShardedEma | None
) -> dict[str, Any]:
    """The DCP state; without an optimizer (evaluation) its entries are neither read nor set."""
    state: dict[str, Any]
    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
    else:
        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optim": optim_state}
    if ema is not None:
        state["ema"] = ema.state_dict()
    return state


def save_checkpoint(
    store: CheckpointStore,
    state: TrainState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: ShardedEma | None,
    *,
    runtime: Runtime,
    keep_last: int,
) -> str:
    """Write and commit the checkpoint for `state.step` (a collective); returns its path."""
    path = store.path_for(state.step)
    if store.is_committed(path):
        return path
    if runtime.is_main:
        store.remove(path)  # leftovers of an unfinished save of this step
    barrier(runtime)
    dcp.save(collect_tensor_state(model, optimizer, ema), storage_writer=make_writer(path))
    # dcp.save returns on rank 0 only after every rank's shards and the metadata are written.
    if runtime.is_main:
        store.write_json(join_uri(path, TRAINER_STATE_FILE), encode_train_state(state))
        delay_commit_for_fault_tests(state.step)
        marker = {"step": state.step, "worldSize": runtime.world_size, "time": time.time()}
        store.write_json(join_uri(path, COMMIT_MARKER), marker)
        store.prune(keep_last)
    barrier(runtime)
    return path


def encode_train_state(state: TrainState) -> dict[str, Any]:
    return {
        "step": state.step,
        "lrScheduler": state.lr_scheduler,
        "data": state.data,
        "seed": state.seed,
        "worldSize": state.world_size,
        "hasEma": state.has_ema,
        "dataStepOffset": state.data_step_offset,
    }


def decode_train_state(payload: dict[str, Any]) -> TrainState:
    return TrainState(
        step=int(payload["step"]),
        lr_scheduler=payload["lrScheduler"],
        data=payload.get("data"),
        seed=int(payload["seed"]),
        world_size=int(payload["worldSize"]),
        has_ema=bool(payload.get("hasEma", False)),
        data_step_offset=int(payload.get("dataStepOffset", 0)),
    )


def load_checkpoint(
    store: CheckpointStore,
    path: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    ema: ShardedEma | None,
) -> TrainState:
    """Restore tensors in place (resharding as needed) and return the non-tensor state."""
    if not store.is_committed(path):
        raise CheckpointStorageError(f"checkpoint {path} has no {COMMIT_MARKER} marker")
    state = decode_train_state(store.read_json(join_uri(path, TRAINER_STATE_FILE)))
    load_ema = ema is not None and state.has_ema
    tensors = collect_tensor_state(model, optimizer, ema if load_ema else None)
    dcp.load(tensors, storage_reader=make_reader(path))
    if optimizer is None:
        set_model_state_dict(model, tensors["model"])
    else:
        set_state_dict(
            model, optimizer, model_state_dict=tensors["model"], optim_state_dict=tensors["optim"]
        )
    if ema is not None:
        if load_ema:
            ema.load_state_dict(tensors["ema"])
        else:
            ema.copy_from_model()  # no EMA saved: start it from the restored weights
    return state


def resolve_resume_path(store: CheckpointStore, requested: str | None) -> str | None:
    """RESUME_FROM / checkpoint.resumeFrom (a step directory or a checkpoint root), else the
    latest committed checkpoint under the store's URI, else None (a fresh start).

    A newer committed checkpoint under the job's own URI wins over the requested one: a Job
    that Kueue re-admits, or that resumes from suspension, keeps the RESUME_FROM it was
    created with, and must not roll back the progress made since."""
    own_latest = store.latest_committed()
    if not requested:
        return own_latest
    requested = requested.rstrip("/")
    candidate = CheckpointStore(requested)
    resolved = requested if candidate.is_committed(requested) else candidate.latest_committed()
    if resolved is None:
        raise CheckpointStorageError(
            f"resume source {requested!r} is neither a committed checkpoint nor a folder "
            "holding one"
        )
    if own_latest is not None and step_of(own_latest) > step_of(resolved):
        return own_latest
    return resolved


def rollback_done_marker(store: CheckpointStore, attempt: int) -> str:
    return join_uri(store.uri, f".rolled-back-in-attempt-{attempt}")


def resolve_rollback_path(store: CheckpointStore, num_back: int, attempt: int) -> str | None:
    """The `num_back`-th committed checkpoint before the newest (the oldest if there are fewer,
    None if none); uncommits every newer one, so that neither later resumes nor later saves of
    the same steps can pick the abandoned branch. Once per attempt: a restarted process of the
    same attempt (suspend and resume, Kueue re-admission) resumes from the newest. Rank 0 only."""
    marker = rollback_done_marker(store, attempt)
    if store.fs.exists(marker):
        return store.latest_committed()
    store.fs.makedirs(store.uri, exist_ok=True)
    steps = store.committed_steps()
    if not steps:
        store.write_json(marker, {"rolledBackTo": None, "time": time.time()})
        return None
    chosen = steps[max(len(steps) - 1 - num_back, 0)]
    reason = (
        f"DTJ_ROLLBACK_CHECKPOINTS={num_back}: the run rolled back to step {chosen}, "
        "abandoning this checkpoint"
    )
    for newer in (step for step in steps if step > chosen):
        store.uncommit(store.path_for(newer), reason)
    store.write_json(marker, {"rolledBackTo": chosen, "time": time.time()})
    return store.path_for(chosen)


def step_of(path: str) -> int:
    match = STEP_DIR_PATTERN.match(path.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else -1
