"""Resolve a container's environment the way the kubelet does (pure functions)."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from typing import Any

SecretReader = Callable[[str, str], Mapping[str, str]]  # (namespace, name) -> base64 data
_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")
_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


class EnvError(Exception):
    """The pod's environment cannot be resolved (missing secret or key, unknown field)."""


def resolve_field(pod: Mapping[str, Any], path: str) -> str:
    """The value of a downward-API fieldRef, e.g. metadata.annotations['x']."""
    metadata, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    simple = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
    }
    if path in simple:
        return simple[path] or ""
    match = _SUBSCRIPT.match(path)
    if match is None:
        raise EnvError(f"unsupported fieldRef {path!r}")
    return (metadata.get(match.group(1)) or {}).get(match.group(2), "")


def decode_secret(data: Mapping[str, str]) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in (data or {}).items()}


def expand_references(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: known names are replaced, `$$` escapes, others stay."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, value)


def resolve_env(
    pod: Mapping[str, Any], container: Mapping[str, Any], read_secret: SecretReader
) -> dict[str, str]:
    """envFrom first, then env in order (later entries may reference earlier ones)."""
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        env.update(env_from_source(namespace, source, read_secret))
    for entry in container.get("env") or []:
        env[entry["name"]] = env_value(pod, namespace, entry, env, read_secret)
    return env


def env_from_source(
    namespace: str, source: Mapping[str, Any], read_secret: SecretReader
) -> dict[str, str]:
    ref = source.get("secretRef")
    if ref is None:
        raise EnvError(f"unsupported envFrom source {sorted(source)}")
    prefix = source.get("prefix") or ""
    try:
        data = decode_secret(read_secret(namespace, ref["name"]))
    except KeyError as error:
        if ref.get("optional"):
            return {}
        raise EnvError(f"secret {ref['name']!r} not found") from error
    return {prefix + key: value for key, value in data.items()}


def env_value(
    pod: Mapping[str, Any],
    namespace: str,
    entry: Mapping[str, Any],
    env: Mapping[str, str],
    read_secret: SecretReader,
) -> str:
    if "valueFrom" not in entry:
        return expand_references(entry.get("value") or "", env)
    source = entry["valueFrom"]
    if "fieldRef" in source:
        return resolve_field(pod, source["fieldRef"]["fieldPath"])
    if "secretKeyRef" in source:
        ref = source["secretKeyRef"]
        try:
            return decode_secret(read_secret(namespace, ref["name"]))[ref["key"]]
        except KeyError as error:
            if ref.get("optional"):
                return ""
            raise EnvError(f"secret {ref['name']!r} key {ref['key']!r} not found") from error
    raise EnvError(f"unsupported valueFrom {sorted(source)} for {entry['name']}")


def container_argv(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """command + args with `$(VAR)` expanded; without a command the image entrypoint would
    run, which local mode does not have."""
    command = list(container.get("command") or [])
    if not command:
        raise EnvError("container has no command; local mode cannot run an image entrypoint")
    return [expand_references(arg, env) for arg in command + list(container.get("args") or [])]
