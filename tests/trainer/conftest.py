"""Shared data and training runs for the trainer tests.

Everything is real: MDS shards written here, tiny encoders made from configs, trainer runs in
this process (world size 1) or as torchrun/python child processes (gloo on CPU). Expensive
runs are session fixtures that several tests assert on.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from trainer_harness import TrainerRun, base_config, launch_trainer, merge, run_in_process

NUM_SYNTH_SAMPLES = 192


@pytest.fixture
def world_of_one() -> Iterator[Any]:
    """A one-process gloo group in this process (FSDP2 and DCP need one)."""
    from diffusion_trainer.distributed import init_runtime, shutdown_runtime

    runtime = init_runtime()
    yield runtime
    shutdown_runtime()


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Raw shapes, tiny encoders and their precomputed latents (written once per session)."""
    from diffusion_trainer.data_synth import write_synthetic_dataset

    return write_synthetic_dataset(
        tmp_path_factory.mktemp("synth"), num_samples=NUM_SYNTH_SAMPLES, seed=3
    )


@pytest.fixture(scope="session")
def make_config(synth_dataset: Any) -> Callable[..., dict[str, Any]]:
    def make(checkpoint_uri: Path, **overrides: Any) -> dict[str, Any]:
        return merge(base_config(synth_dataset.latents, checkpoint_uri), overrides)

    return make


@pytest.fixture(scope="session")
def reference_run(
    tmp_path_factory: pytest.TempPathFactory,
    make_config: Callable[..., dict[str, Any]],
    synth_dataset: Any,
) -> TrainerRun:
    """Uninterrupted 1-process run: 10 steps of global batch 8 (2 micro-batches of 4). The
    encoders are only read by the final export (training is on latents): a full pipeline."""
    root = tmp_path_factory.mktemp("reference")
    encoders = str(synth_dataset.encoders)
    model = {"vae": encoders, "textEncoder": encoders}
    return run_in_process(make_config(root / "ckpt", model=model))


@pytest.fixture(scope="session")
def stopped_two_process_run(
    tmp_path_factory: pytest.TempPathFactory, make_config: Callable[..., dict[str, Any]]
) -> TrainerRun:
    """The same job under torchrun with 2 processes (1 micro-batch of 4 each), sent SIGTERM
    (to torchrun, as the kubelet does) once step 5 is logged."""
    root = tmp_path_factory.mktemp("two-proc")
    config = make_config(root / "ckpt", data={"train": {"numWorkers": 1}})
    return launch_trainer(root, config, nproc=2, stop_after_step=5, stop_signal=signal.SIGTERM)


@pytest.fixture(scope="session")
def killed_one_process_run(
    tmp_path_factory: pytest.TempPathFactory, make_config: Callable[..., dict[str, Any]]
) -> TrainerRun:
    """`python -m diffusion_trainer` (world size 1), SIGKILLed after step 5 was logged."""
    root = tmp_path_factory.mktemp("killed")
    return launch_trainer(root, make_config(root / "ckpt"), nproc=1, stop_after_step=5)
