"""The cluster connection a kubectl plugin gets: kubeconfig, context and namespace as kubectl
resolves them (flags, then KUBECONFIG and the context's namespace), in-cluster as a fallback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

IN_CLUSTER_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class Connection:
    api: Any  # kubernetes.client.ApiClient
    namespace: str

    @property
    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api)


def connect(kubeconfig: str | None, context: str | None, namespace: str | None) -> Connection:
    from kubernetes import client, config

    try:
        config.load_kube_config(config_file=kubeconfig, context=context)
        default_namespace = context_namespace(kubeconfig, context)
    except config.ConfigException:
        config.load_incluster_config()
        default_namespace = in_cluster_namespace()
    return Connection(client.ApiClient(), namespace or default_namespace)


def context_namespace(kubeconfig: str | None, context: str | None) -> str:
    from kubernetes import config

    contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
    chosen = next((c for c in contexts if c["name"] == context), active) if context else active
    return str((chosen or {}).get("context", {}).get("namespace") or "default")


def in_cluster_namespace() -> str:
    if IN_CLUSTER_NAMESPACE_FILE.exists():
        return IN_CLUSTER_NAMESPACE_FILE.read_text().strip()
    return "default"
