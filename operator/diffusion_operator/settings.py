"""Operator settings, read once from the environment (DTJ_OPERATOR_*)."""

from __future__ import annotations

import os
import socket
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

ENV_PREFIX = "DTJ_OPERATOR_"


class OperatorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    namespaces: Annotated[
        list[str], Field(description="Namespaces to watch; empty: all (cluster scope).")
    ] = Field(default_factory=list)
    workers: Annotated[int, Field(ge=1, le=64, description="Passes run at once (jobs).")] = 16
    progress_interval_s: Annotated[
        float, Field(gt=0, description="How often running jobs' progress is read.")
    ] = 10.0
    resync_interval_s: Annotated[
        float, Field(gt=0, description="Safety net: every job is reconciled this often.")
    ] = 300.0
    watch_server_timeout_s: Annotated[int, Field(ge=10)] = 240
    watch_client_timeout_s: Annotated[int, Field(ge=10)] = 300
    api_timeout_s: Annotated[float, Field(gt=0, description="Read timeout of API requests.")] = 15.0
    stall_timeout_s: Annotated[
        float, Field(ge=5, description="Liveness fails after this long without progress.")
    ] = 60.0
    leader_election: Annotated[
        bool, Field(description="Hold a Lease before acting; needed for more than one replica.")
    ] = True
    lease_name: str = "diffusion-operator"
    lease_namespace: Annotated[
        str, Field(description="Default: $POD_NAMESPACE, else the first watched namespace.")
    ] = ""
    lease_duration_s: Annotated[float, Field(ge=3)] = 15.0
    identity: Annotated[str, Field(description="Lease holder name; default: $POD_NAME.")] = ""
    log_format: Literal["json", "text"] = "text"
    liveness_port: Annotated[int, Field(ge=0, le=65535, description="0: no probe server.")] = 8080
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
    allowed_service_accounts: Annotated[
        list[str] | None,
        Field(
            description=(
                "ServiceAccounts a job's spec.serviceAccountName may name ('*': any); unset: any."
                " A job that names none runs as its namespace's default ServiceAccount."
            )
        ),
    ] = None


def lease_namespace(settings: OperatorSettings, environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return (
        settings.lease_namespace
        or env.get("POD_NAMESPACE")
        or (settings.namespaces[0] if settings.namespaces else "default")
    )


def identity(settings: OperatorSettings) -> str:
    """Unique per process: two replicas (or a restarted one) never share a holder name."""
    base = settings.identity or os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{os.getpid()}_{uuid.uuid4().hex[:6]}"


def load_settings(environ: dict[str, str] | None = None) -> OperatorSettings:
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for name in OperatorSettings.model_fields:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        is_list = name in ("namespaces", "allowed_service_accounts")
        values[name] = [n.strip() for n in raw.split(",") if n.strip()] if is_list else raw
    return OperatorSettings.model_validate(values)
