"""`data.synthesize`: the synthetic shapes dataset written where the job reads it, before
training, so that a first job needs no data staged anywhere.

Each pod writes its own copy (the seed makes the copies alike). Within a pod, local rank 0
writes into a staging directory and renames it into place; the other local ranks wait for it.
A dataset already there (a restarted process, a volume kept between attempts) is used as is.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from diffusion_trainer.config import ConfigError, SyntheticDataConfig

log = logging.getLogger("diffusion_trainer")
DONE_MARKER = ".synthesized"
WAIT_TIMEOUT_S = 900.0


def is_synthesized(out: Path) -> bool:
    return (out / DONE_MARKER).is_file()


def write_in_place(settings: SyntheticDataConfig, out: Path) -> None:
    from diffusion_trainer.data_synth import write_synthetic_dataset

    staging = out.with_name(f"{out.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    started = time.monotonic()
    write_synthetic_dataset(staging, num_samples=settings.num_samples, seed=settings.seed)
    (staging / DONE_MARKER).touch()
    try:
        staging.rename(out)
    except OSError:  # another process of this pod's filesystem got there first
        shutil.rmtree(staging, ignore_errors=True)
    log.info(
        "synthesized %d samples in %s in %.1f s",
        settings.num_samples,
        out,
        time.monotonic() - started,
    )


def wait_for(out: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not is_synthesized(out):
        if time.monotonic() > deadline:
            raise ConfigError(
                f"data.synthesize.out={str(out)!r}: local rank 0 did not finish writing the "
                f"synthetic dataset within {timeout_s:.0f} s"
            )
        time.sleep(1.0)


def ensure_synthetic_data(settings: SyntheticDataConfig, local_rank: int) -> None:
    out = Path(settings.out)
    if is_synthesized(out):
        return
    if out.exists() and any(out.iterdir()):
        raise ConfigError(
            f"data.synthesize.out={settings.out!r} exists and is not a synthetic dataset "
            "written by the trainer; point it at an empty or absent directory"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if local_rank == 0:
        write_in_place(settings, out)
    else:
        wait_for(out, WAIT_TIMEOUT_S)
