"""A real single-process trainer run on CPU that keeps training (with checkpoints and
evaluations) until the test stops it: the live data behind progress and metrics tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml


def endless_run_config(
    synth: Any,
    checkpoint_dir: Path,
    *,
    metrics_port: int,
    eval_interval_steps: int,
    checkpoint_interval_steps: int,
) -> dict:
    """The tiny model on a synthetic dataset (`write_synthetic_dataset`), one step per
    log line, far more steps than any test waits for."""
    encoders = synth.encoders
    return {
        "model": {"unet": "tiny", "vae": str(encoders), "textEncoder": str(encoders)},
        "data": {
            "train": {"local": str(synth.latents), "resolution": 64, "numWorkers": 0},
            "eval": {"local": str(synth.raw), "precomputedLatents": False},
        },
        "eval": {
            "intervalSteps": eval_interval_steps,
            "guidanceScales": [1.0, 4.0],
            "numSamples": 4,
            "numInferenceSteps": 2,
            "numGridImages": 2,
            "clipModel": str(encoders / "clip"),
            "fidFeatureExtractor": str(encoders / "fid-features"),
        },
        "training": {
            "globalBatchSize": 4,
            "microBatchSize": 4,
            "maxSteps": 100_000,
            "warmupSteps": 1,
            "precision": "fp32",
            "logIntervalSteps": 1,
        },
        "checkpoint": {
            "uri": str(checkpoint_dir),
            "intervalSteps": checkpoint_interval_steps,
            "keepLast": 1,
        },
        "metrics": {"port": metrics_port},
    }


def start_trainer(config: dict, work_dir: Path, extra_env: dict[str, str]) -> subprocess.Popen:
    """`python -m diffusion_trainer` on the config, its output in work_dir/trainer.log."""
    config_path = work_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "DTJ_TERMINATION_LOG": str(work_dir / "termination-log"),
        **extra_env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "diffusion_trainer", "--config", str(config_path)],
        env=env,
        stdout=(work_dir / "trainer.log").open("w"),
        stderr=subprocess.STDOUT,
    )
