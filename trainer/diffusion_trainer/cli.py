"""Entry points: the trainer (`python -m diffusion_trainer --config ...`, run by torchrun in
every worker pod) and the dataset tools (`run_data_command`, behind `dtj data ...`).

torch is imported only after the config has been validated, so a bad config fails in about a
second with exit code 2 and a message naming the field, before any process group exists.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from diffusion_trainer.config import ConfigError, TrainerConfig, dump_config, load_config
from diffusion_trainer.preflight import apply_env_overrides, preflight
from diffusion_trainer.report import (
    EXIT_CONFIG_ERROR,
    EXIT_ERROR,
    EXIT_OK,
    FAILURE_CONFIG,
    FAILURE_ERROR,
    RunSummary,
    write_summary,
)

DEFAULT_CONFIG_PATH = "/etc/dtj/config.yaml"
log = logging.getLogger("diffusion_trainer")


def configure_logging() -> None:
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO if rank == "0" else logging.WARNING,
        format=f"%(asctime)s [dtj rank={rank}] %(levelname)s %(message)s",
        stream=sys.stdout,
        force=True,
    )


def load_checked_config(path: str, *, prepare_data: bool = True) -> TrainerConfig:
    config = apply_env_overrides(load_config(path))
    if prepare_data and config.data.synthesize is not None:
        from diffusion_trainer.synthetic_source import ensure_synthetic_data

        ensure_synthetic_data(config.data.synthesize, int(os.environ.get("LOCAL_RANK", "0")))
    preflight(config)
    return config


def parse_train_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_trainer", description="Train a diffusion U-Net (FSDP2)."
    )
    parser.add_argument("--config", default=os.environ.get("DTJ_CONFIG", DEFAULT_CONFIG_PATH))
    parser.add_argument(
        "--check", action="store_true", help="validate the config, print it, and exit"
    )
    return parser.parse_args(argv)


def train_command(argv: list[str]) -> int:
    args = parse_train_args(argv)
    configure_logging()
    try:
        config = load_checked_config(args.config, prepare_data=not args.check)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        if writes_termination_message() and not args.check:
            write_summary(failed_summary(None, EXIT_CONFIG_ERROR, f"config error: {error}"))
        return EXIT_CONFIG_ERROR
    if args.check:
        print(dump_config(config), end="")
        return EXIT_OK
    return run_trainer(config)


if TYPE_CHECKING:
    from diffusion_trainer.metrics import TrainerTelemetry


def writes_termination_message() -> bool:
    """Local rank 0 of each pod: every worker pod says why it ended, so the operator classifies
    a failure from whichever pod it sees first."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


def run_trainer(config: TrainerConfig) -> int:
    from diffusion_trainer.checkpoint import CheckpointStorageError
    from diffusion_trainer.preemption import StopRequest
    from diffusion_trainer.train import run_training
    from diffusion_trainer.watchdog import install_stack_dump_signal

    install_stack_dump_signal()
    telemetry = start_telemetry(config)
    stop = StopRequest()
    stop.install()
    failures: list[RunSummary] = []  # where the loop got to, if it raised
    try:
        summary = run_training(config, stop, telemetry=telemetry, on_failure=failures.append)
    except CheckpointStorageError as error:
        print(f"config error: {error}", file=sys.stderr)
        summary = failed_summary(config, EXIT_CONFIG_ERROR, str(error))
    except Exception as error:
        if writes_termination_message():
            message = f"{type(error).__name__}: {error}"
            write_summary(failures[0] if failures else failed_summary(config, EXIT_ERROR, message))
        raise
    finally:
        stop.restore()
        if telemetry is not None:
            telemetry.close()
    if writes_termination_message():
        write_summary(summary)
    return summary.exit_code


def start_telemetry(config: TrainerConfig) -> TrainerTelemetry | None:
    """Metrics and progress are served by local rank 0 of each pod (one port per pod)."""
    if not config.metrics.enabled or os.environ.get("LOCAL_RANK", "0") != "0":
        return None
    from diffusion_trainer.metrics import TrainerTelemetry

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    telemetry = TrainerTelemetry(
        config.run, config.training.max_steps, config.training.global_batch_size, world_size
    )
    try:
        telemetry.serve(config.metrics.port)
    except OSError as error:  # a busy port must not stop training
        print(f"metrics: cannot listen on port {config.metrics.port}: {error}", file=sys.stderr)
        return None
    return telemetry


def failed_summary(config: TrainerConfig | None, exit_code: int, message: str) -> RunSummary:
    """The summary of a run that failed before its loop could say where it got to."""
    return RunSummary(
        status="failed",
        exit_code=exit_code,
        step=0,
        max_steps=0 if config is None else config.training.max_steps,
        final_loss=None,
        images_per_second=None,
        last_checkpoint=None,
        exported=None,
        message=message[:1000],
        failure_class=FAILURE_CONFIG if exit_code == EXIT_CONFIG_ERROR else FAILURE_ERROR,
    )


def build_data_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dtj data", description="Dataset tools (MDS).")
    commands = parser.add_subparsers(dest="command", required=True)
    synth = commands.add_parser("synth", help="write the synthetic coloured-shapes dataset")
    synth.add_argument("--out", required=True, type=Path)
    synth.add_argument("--num-samples", type=int, default=256)
    synth.add_argument("--resolution", type=int, default=64)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--no-latents", action="store_true", help="skip the latents/ variant")
    synth.add_argument("--vae-downsample-factor", type=int, choices=(4, 8), default=8)
    synth.add_argument(
        "--vae-train-steps",
        type=int,
        default=0,
        help="fit the tiny VAE this many steps so decoded samples look right",
    )
    convert = commands.add_parser("convert", help="image folder or parquet -> raw MDS")
    source = convert.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="folder of images with captions")
    source.add_argument("--parquet", type=Path, nargs="+", help="parquet file(s)")
    convert.add_argument("--out", required=True)
    convert.add_argument("--image-column", default="image")
    convert.add_argument("--caption-column", default="caption")
    precompute = commands.add_parser("precompute", help="raw MDS -> precomputed-latent MDS")
    precompute.add_argument("--input", required=True, help="local raw MDS dataset")
    precompute.add_argument("--out", required=True)
    precompute.add_argument("--vae", required=True, help="HF id or path (vae/ or a VAE)")
    precompute.add_argument(
        "--text-encoder", required=True, help="HF id or path holding text_encoder/ and tokenizer/"
    )
    precompute.add_argument("--resolution", type=int, required=True)
    precompute.add_argument("--batch-size", type=int, default=32)
    return parser


def run_data_command(argv: list[str]) -> int:
    """`dtj data synth|convert|precompute ...`; returns the exit code."""
    args = build_data_parser().parse_args(argv)
    configure_logging()
    if args.command == "synth":
        from diffusion_trainer.data_synth import write_synthetic_dataset

        paths = write_synthetic_dataset(
            args.out,
            num_samples=args.num_samples,
            resolution=args.resolution,
            seed=args.seed,
            with_latents=not args.no_latents,
            vae_downsample_factor=args.vae_downsample_factor,
            vae_train_steps=args.vae_train_steps,
        )
        print(f"raw: {paths.raw}\nencoders: {paths.encoders}\nlatents: {paths.latents}")
        return EXIT_OK
    if args.command == "convert":
        return convert_command(args)
    from diffusion_trainer.data_precompute import precompute_latents

    num = precompute_latents(
        args.input,
        args.out,
        vae_source=args.vae,
        text_encoder_source=args.text_encoder,
        resolution=args.resolution,
        batch_size=args.batch_size,
    )
    print(f"wrote {num} samples to {args.out}")
    return EXIT_OK


def convert_command(args: argparse.Namespace) -> int:
    from diffusion_trainer.data_convert import ConvertError, convert_image_folder, convert_parquet

    try:
        if args.images is not None:
            num = convert_image_folder(args.images, args.out)
        else:
            num = convert_parquet(args.parquet, args.out, args.image_column, args.caption_column)
    except ConvertError as error:
        print(f"convert error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    print(f"wrote {num} samples to {args.out}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["data"]:
        return run_data_command(args[1:])
    if args[:1] == ["eval"]:
        from diffusion_trainer.eval_cli import run_eval_command

        return run_eval_command(args[1:])
    return train_command(args)
