"""Pure functions that build a job's child objects (ConfigMap, headless Service, Indexed Job)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffusion_operator import constants as c
from diffusion_operator import names
from diffusion_trainer.config import TrainerConfig, dump_config

NCCL_DEFAULTS = {
    # Fail fast on a broken collective instead of hanging until the job deadline.
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    "TORCH_NCCL_ENABLE_MONITORING": "1",
    "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC": "600",
    "DTJ_COLLECTIVE_TIMEOUT_S": "1800",
}


@dataclass(frozen=True)
class Owner:
    """The DiffusionTrainingJob that owns (and garbage-collects) every child."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": c.API_VERSION,
            "kind": c.KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def labels(self) -> dict[str, str]:
        return {c.LABEL_JOB_NAME: self.name, c.LABEL_MANAGED_BY: c.MANAGED_BY}


def child_metadata(owner: Owner, name: str, extra_labels: dict[str, str] | None = None) -> dict:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": {**owner.labels(), **(extra_labels or {})},
        "ownerReferences": [owner.reference()],
    }


def build_config_map(owner: Owner, config: TrainerConfig) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(owner, names.config_map_name(owner.name)),
        "data": {c.CONFIG_FILE_NAME: dump_config(config)},
    }


def build_service(owner: Owner) -> dict[str, Any]:
    """Headless Service: stable DNS names for workers, published before they are ready."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(owner, names.service_name(owner.name)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {c.LABEL_JOB_NAME: owner.name, c.LABEL_ROLE: "worker"},
            "ports": [
                {"name": "rendezvous", "port": c.RENDEZVOUS_PORT, "protocol": "TCP"},
                {"name": c.METRICS_PORT_NAME, "port": c.METRICS_PORT, "protocol": "TCP"},
            ],
        },
    }
