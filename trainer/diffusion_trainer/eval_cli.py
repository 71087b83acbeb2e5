"""`dtj eval`: FID and CLIP score of a checkpoint, offline (alone or under torchrun).

    dtj eval --checkpoint URI --data URI --guidance-scales 1,3,7 --num-samples N --seed S

`--checkpoint` is a committed training checkpoint (its U-Net is built from `--config` or the
shipped architecture) or a diffusers folder (an export, or any folder with unet/). Writes
report.json and grid.png to `--out`; real-image statistics are cached under `--stats-cache`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from diffusion_trainer.config import (
    ConfigError,
    DatasetConfig,
    TrainerConfig,
    load_config,
    missing_eval_inputs,
)
from diffusion_trainer.report import EXIT_CONFIG_ERROR, EXIT_OK

EVAL_FLAGS = {  # flag -> the eval config field it sets
    "guidance_scales": "guidance_scales",
    "num_samples": "num_samples",
    "seed": "seed",
    "sampler": "sampler",
    "steps": "num_inference_steps",
    "batch_size": "batch_size",
    "resolution": "resolution",
    "clip_model": "clip_model",
    "fid_features": "fid_feature_extractor",
    "metrics": "metrics",
}


def parse_scales(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,3,7: {error}") from error


def build_eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dtj eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint dir or diffusers folder")
    parser.add_argument("--data", required=True, help="eval MDS dataset: local path or URI")
    parser.add_argument("--data-cache", default="/tmp/dtj-eval-data", help="local shard cache")
    parser.add_argument("--layout", choices=("auto", "latents", "raw"), default="auto")
    parser.add_argument("--config", help="trainer config YAML (model sources, eval defaults)")
    parser.add_argument("--out", default="dtj-eval", help="report.json and grid.png go here")
    parser.add_argument("--stats-cache", help="real-image statistics cache (default: --out)")
    parser.add_argument("--guidance-scales", type=parse_scales)
    parser.add_argument("--num-samples", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--sampler", choices=("ddim", "dpm-solver"))
    parser.add_argument("--steps", type=int, help="denoising steps")
    parser.add_argument("--batch-size", type=int, help="images per process per batch")
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--metrics", type=lambda text: text.split(","), help="fid,clip")
    parser.add_argument("--unet", choices=("sd2-base", "tiny"), help="checkpoint's architecture")
    parser.add_argument("--vae", help="VAE source (default: the config's, or the checkpoint's)")
    parser.add_argument("--text-encoder", help="text encoder + tokenizer source")
    parser.add_argument("--clip-model", help="CLIP model: hub id or local folder")
    parser.add_argument("--fid-features", help="Inception weights file or tiny feature folder")
    parser.add_argument("--no-ema", action="store_true", help="checkpoint: the trained weights")
    return parser


def detect_latents(args: argparse.Namespace) -> bool:
    if args.layout != "auto":
        return bool(args.layout == "latents")
    index = Path(args.data) / "index.json"
    if not index.is_file():
        raise ConfigError("--layout latents|raw is needed for a remote --data")
    shards = json.loads(index.read_text())["shards"]
    return "latents" in shards[0]["column_names"]


def is_diffusers_folder(path: str) -> bool:
    root = Path(path)
    return (root / "model_index.json").is_file() or (root / "unet" / "config.json").is_file()


def eval_config_from_args(args: argparse.Namespace) -> TrainerConfig:
    base = load_config(args.config) if args.config else TrainerConfig()
    remote = args.data if "://" in args.data else None
    local = args.data_cache if remote else args.data
    dataset = DatasetConfig(
        remote=remote,
        local=local,
        precomputed_latents=detect_latents(args),
    )
    overrides = {
        field: getattr(args, flag)
        for flag, field in EVAL_FLAGS.items()
        if getattr(args, flag) is not None
    }
    overrides["use_ema"] = not args.no_ema and base.eval.use_ema
    folder = args.checkpoint if is_diffusers_folder(args.checkpoint) else None
    model: dict[str, Any] = {
        "unet": args.unet or base.model.unet,
        "vae": args.vae or base.model.vae_source or folder,
        "text_encoder": args.text_encoder
        or base.model.text_encoder
        or folder
        or base.model.pretrained,
    }
    try:
        eval_config = base.eval.model_validate({**base.eval.model_dump(), **overrides})
        config = base.model_copy(
            update={
                "eval": eval_config,
                "data": base.data.model_copy(update={"eval": dataset}),
                "model": base.model.model_copy(update=model),
            }
        )
    except ValueError as error:
        raise ConfigError(str(error)) from error
    if problems := missing_eval_inputs(config):
        raise ConfigError("dtj eval needs " + "; ".join(problems) + " (--vae, --text-encoder)")
    return config


def run_eval_command(argv: list[str]) -> int:
    """Parse, validate, evaluate; returns the exit code."""
    from diffusion_trainer.cli import configure_logging

    args = build_eval_parser().parse_args(argv)
    configure_logging()
    try:
        config = eval_config_from_args(args)
    except ConfigError as error:
        print(f"dtj eval: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    from diffusion_trainer.eval_offline import evaluate_checkpoint

    result = evaluate_checkpoint(config, args.checkpoint, args.out, args.stats_cache or args.out)
    if result is not None:
        print(json.dumps(result, indent=2))
    return EXIT_OK
