"""`kubectl dtj submit`: a DiffusionTrainingJob from a preset and `--set a.b=c` overrides,
validated by the same models the operator uses before anything reaches the cluster."""

from __future__ import annotations

import re
import secrets
from typing import Any

import yaml

from diffusion_operator import constants as c


class SubmitError(ValueError):
    """Bad --set input or a spec the API would refuse: names the flag or field."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """`training.maxSteps=100` -> (["training", "maxSteps"], 100); values are YAML scalars and
    `\\.` keeps a dot inside a key (`resources.nodeSelector.example\\.com/pool=a`)."""
    path, sep, raw = text.partition("=")
    keys = [key.replace("\\.", ".") for key in re.split(r"(?<!\\)\.", path)]
    if not sep or any(not key for key in keys):
        raise SubmitError(f"--set {text!r}: write key.path=value, e.g. training.maxSteps=100")
    return keys, yaml.safe_load(raw) if raw else ""


def apply_override(spec: dict[str, Any], keys: list[str], value: Any) -> None:
    node = spec
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise SubmitError(f"--set {'.'.join(keys)}: {key} is a value, not a section")
        node = child
    node[keys[-1]] = value


def build_manifest(
    name: str | None, preset: str, image: str, overrides: list[str]
) -> dict[str, Any]:
    from pydantic import ValidationError

    from diffusion_operator.spec import DiffusionTrainingJobSpec

    spec: dict[str, Any] = {"preset": preset, "image": image}
    for text in overrides:
        apply_override(spec, *parse_override(text))
    try:
        DiffusionTrainingJobSpec.model_validate(spec)
    except ValidationError as error:
        first = error.errors()[0]
        field = "spec." + ".".join(str(part) for part in first["loc"])
        raise SubmitError(f"{field}: {first['msg']}") from None
    return {
        "apiVersion": f"{c.GROUP}/{c.VERSION}",
        "kind": c.KIND,
        "metadata": {"name": name or f"{preset}-{secrets.token_hex(3)}"},
        "spec": spec,
    }
