"""Resolve a job spec into the complete trainer config (explicit > preset > built-in default)."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import ValidationError

from diffusion_operator.presets import PRESETS
from diffusion_operator.spec import DiffusionTrainingJobSpec
from diffusion_trainer.config import (
    ConfigError,
    RunInfo,
    TrainerConfig,
    check_world_layout,
    format_validation_error,
)

RECIPE_SECTIONS = ("model", "data", "training", "eval", "checkpoint")


def merge_dicts(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: nested dicts merge key by key, anything else in `override` wins."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_dicts(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def explicit_recipe(spec: DiffusionTrainingJobSpec) -> dict[str, Any]:
    """The recipe sections exactly as the user wrote them (unset fields left out)."""
    recipe: dict[str, Any] = {}
    for section in RECIPE_SECTIONS:
        value = getattr(spec, section)
        if value is not None:
            recipe[section] = value.model_dump(by_alias=True, exclude_none=True)
    return recipe


def world_size(spec: DiffusionTrainingJobSpec) -> int:
    return spec.resources.nodes * spec.processes_per_node


def render_trainer_config(
    spec: DiffusionTrainingJobSpec, job_name: str, namespace: str, default_checkpoint_uri: str
) -> TrainerConfig:
    """Complete, validated trainer config for this job; ConfigError names the field to fix."""
    preset = PRESETS[spec.preset] if spec.preset else {}
    recipe = merge_dicts(
        {"checkpoint": {"uri": default_checkpoint_uri}}, merge_dicts(preset, explicit_recipe(spec))
    )
    recipe["run"] = RunInfo(job_name=job_name, namespace=namespace).model_dump(by_alias=True)
    try:
        config = TrainerConfig.model_validate(recipe)
    except ValidationError as error:
        raise ConfigError(
            format_validation_error(error).replace("trainer config", "spec")
        ) from error
    try:
        check_world_layout(config.training, world_size(spec), spec.processes_per_node)
    except ValueError as error:
        raise ConfigError(str(error).replace("training.", "spec.training.")) from error
    return config
