"""Operator settings, read once from the environment (DTJ_OPERATOR_*)."""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

ENV_PREFIX = "DTJ_OPERATOR_"


class OperatorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    namespaces: Annotated[
        list[str], Field(description="Namespaces to watch; empty: all (cluster scope).")
    ] = Field(default_factory=list)
    reconcile_interval_s: Annotated[float, Field(gt=0)] = 5.0
    watch_server_timeout_s: Annotated[int, Field(ge=10)] = 300
    watch_client_timeout_s: Annotated[int, Field(ge=10)] = 330
    log_format: Literal["json", "text"] = "text"
    liveness_port: Annotated[int, Field(ge=1, le=65535)] = 8080
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 8000
    default_checkpoint_root: str = "/checkpoints"
    watch_nodes: Annotated[
        bool,
        Field(description="Watch nodes (get/list/watch on nodes) to see NotReady and lost ones."),
    ] = True
    progress_address: Annotated[
        Literal["pod-ip", "service-dns"],
        Field(description="How to reach rank 0's progress endpoint."),
    ] = "pod-ip"


def load_settings(environ: dict[str, str] | None = None) -> OperatorSettings:
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for name in OperatorSettings.model_fields:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        values[name] = [n for n in raw.split(",") if n] if name == "namespaces" else raw
    return OperatorSettings.model_validate(values)
