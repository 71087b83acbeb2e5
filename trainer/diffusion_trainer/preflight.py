"""Checks that need no torch and no process group: run them first, fail fast with exit code 2.

A bad config must never get as far as NCCL/gloo initialisation, where it would surface as a
hang or an opaque collective error on some other rank.
"""

from __future__ import annotations

import os
from pathlib import Path

from diffusion_trainer.config import (
    ConfigError,
    DatasetConfig,
    TrainerConfig,
    check_world_layout,
)
from diffusion_trainer.fault_injection import read_fault_injection
from diffusion_trainer.resilience import read_resilience_settings

SHIPPED_UNETS = ("sd2-base", "tiny")


def apply_env_overrides(config: TrainerConfig) -> TrainerConfig:
    """DTJ_JOB_NAME, DTJ_NAMESPACE and DTJ_ATTEMPT (set by the operator) override `run`."""
    run = config.run.model_copy()
    if name := os.environ.get("DTJ_JOB_NAME"):
        run.job_name = name
    if namespace := os.environ.get("DTJ_NAMESPACE"):
        run.namespace = namespace
    if attempt := os.environ.get("DTJ_ATTEMPT"):
        if not attempt.isdigit() or int(attempt) < 1:
            raise ConfigError(f"DTJ_ATTEMPT={attempt!r} must be a positive integer")
        run.attempt = int(attempt)
    return config.model_copy(update={"run": run})


def read_positive_env(name: str) -> int:
    value = os.environ.get(name, "1")
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{name}={value!r} must be a positive integer")
    return int(value)


def env_world_size() -> int:
    return read_positive_env("WORLD_SIZE")


def env_local_world_size() -> int:
    """Processes per node (torchrun's LOCAL_WORLD_SIZE)."""
    return read_positive_env("LOCAL_WORLD_SIZE")


def check_model(config: TrainerConfig) -> None:
    model = config.model
    if model.pretrained is None and model.unet not in SHIPPED_UNETS:
        raise ConfigError(
            f"model.unet={model.unet!r} is not a shipped U-Net; use one of "
            f"{', '.join(SHIPPED_UNETS)} or set model.pretrained"
        )
    if config.data.train.precomputed_latents:
        return
    for field, value in (("model.vae", model.vae), ("model.textEncoder", model.text_encoder)):
        if value is None and model.pretrained is None:
            raise ConfigError(
                f"{field} is required when data.train.precomputedLatents is false "
                "(raw images are encoded on the fly); set it or model.pretrained"
            )


def is_synthesized_later(config: TrainerConfig, path: str) -> bool:
    """Under `data.synthesize.out`: the trainer writes it before it trains (`--check` does not
    write it, so it checks nothing there either)."""
    synthesize = config.data.synthesize
    return synthesize is not None and Path(path).is_relative_to(synthesize.out)


def check_local_dataset(config: TrainerConfig, dataset: DatasetConfig, field: str) -> None:
    for number, source in enumerate(dataset.sources()):
        where = f"{field}.streams[{number}]" if dataset.streams else field
        if source.remote is not None or is_synthesized_later(config, source.local):
            continue
        if not (Path(source.local) / "index.json").is_file():
            raise ConfigError(
                f"{where}.local={source.local!r} holds no MDS dataset (no index.json) and "
                f"{where}.remote is not set"
            )


def looks_local(source: str) -> bool:
    """A filesystem path rather than a hub id ("org/name")."""
    return source.startswith(("/", "./", "../", "~")) or Path(source).expanduser().exists()


def check_eval_sources(config: TrainerConfig) -> None:
    """Evaluation runs hours into training: a missing local input must fail now, not then."""
    eval_config = config.eval
    if not eval_config.enabled or config.data.eval is None:
        return
    check_local_dataset(config, config.data.eval, "data.eval")
    sources = {"eval.fidFeatureExtractor": eval_config.fid_feature_extractor}
    if "clip" in eval_config.metrics:
        sources["eval.clipModel"] = eval_config.clip_model
    for field, source in sources.items():
        if source is None or not looks_local(source) or is_synthesized_later(config, source):
            continue
        if not Path(source).expanduser().exists():
            raise ConfigError(f"{field}={source!r} does not exist; stage the weights there")


def check_checkpoint_backend(config: TrainerConfig) -> None:
    uri = config.checkpoint.uri
    if "://" not in uri:
        return
    import fsspec

    scheme = uri.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as error:
        raise ConfigError(
            f"checkpoint.uri={uri!r}: no usable fsspec backend for {scheme}:// ({error})"
        ) from error


def preflight(config: TrainerConfig) -> int:
    """Validate what depends on the environment; returns gradient accumulation steps."""
    check_model(config)
    try:
        num_accum = check_world_layout(config.training, env_world_size(), env_local_world_size())
    except ValueError as error:
        raise ConfigError(str(error)) from error
    check_local_dataset(config, config.data.train, "data.train")
    check_eval_sources(config)
    check_checkpoint_backend(config)
    read_resilience_settings()  # DTJ_* fault-tolerance variables: a bad one is a config error
    read_fault_injection()
    return num_accum
