"""Recipe presets: partial trainer configs that explicit spec fields override."""

from __future__ import annotations

from typing import Any

_SD2_BASE_TRAINING = {
    "globalBatchSize": 2048,
    "microBatchSize": 16,
    "lr": 1.0e-4,
    "warmupSteps": 10_000,
    "lrSchedule": "constant",
    "weightDecay": 0.01,
    "precision": "bf16",
    "gradClipNorm": 1.0,
    "compile": True,
    "channelsLast": True,
}
# A fixed canonical node count keeps the sample order (and exact resumption) when the job is
# resized; MosaicML's LAION runs use 64.
_SD2_DATA = {"precomputedLatents": True, "captionDropProb": 0.1, "numCanonicalNodes": 64}
_SD2_EVAL = {"intervalSteps": 10_000, "guidanceScales": [1.0, 3.0, 7.0], "numSamples": 30_000}

# MosaicML's SD-2-base recipe: 550k steps at 256px, then 850k at 512px with EMA; bf16 instead of
# fp16 and gradient clipping on (unclipped runs at batch 2048 hit NaN).
PRESETS: dict[str, dict[str, Any]] = {
    "sd2-base-256": {
        "model": {"unet": "sd2-base", "predictionType": "epsilon"},
        "data": {"train": {**_SD2_DATA, "resolution": 256}},
        "training": {**_SD2_BASE_TRAINING, "maxSteps": 550_000},
        "eval": _SD2_EVAL,
        "checkpoint": {"intervalSteps": 5_000, "keepLast": 3},
    },
    "sd2-base-512": {
        "model": {
            "unet": "sd2-base",
            "predictionType": "epsilon",
            "ema": {"decay": 0.9999, "startStep": 0},
        },
        "data": {"train": {**_SD2_DATA, "resolution": 512}},
        "training": {**_SD2_BASE_TRAINING, "maxSteps": 850_000},
        "eval": _SD2_EVAL,
        "checkpoint": {"intervalSteps": 5_000, "keepLast": 3},
    },
    "tiny-cpu": {
        "model": {"unet": "tiny", "predictionType": "epsilon"},
        "data": {
            "train": {
                "precomputedLatents": True,
                "resolution": 64,
                "captionDropProb": 0.1,
                "numWorkers": 0,
            }
        },
        "training": {
            "globalBatchSize": 16,
            "microBatchSize": 8,
            "maxSteps": 200,
            "lr": 1.0e-3,
            "warmupSteps": 10,
            "lrSchedule": "constant",
            "weightDecay": 0.0,
            "precision": "fp32",
            "gradClipNorm": 1.0,
            "compile": False,
            "channelsLast": False,
            "logIntervalSteps": 10,
        },
        "eval": {"intervalSteps": 0},
        "checkpoint": {"intervalSteps": 50, "keepLast": 2},
    },
}
