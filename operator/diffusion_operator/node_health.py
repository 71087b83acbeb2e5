"""Health of the cluster's nodes, fed by a watch on nodes (cheap: a node's object changes only
when its conditions do; heartbeats go to Leases). Read by every pass, never fetched per pass."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from diffusion_operator.observed import NodeHealth

_health: dict[str, NodeHealth] = {}
_lock = threading.Lock()


def record_node(name: str, body: Mapping[str, Any] | None) -> None:
    """A node's latest state; None: it was deleted."""
    health = NodeHealth(exists=False, ready=False) if body is None else health_of(body)
    with _lock:
        _health[name] = health


def known_health(name: str) -> NodeHealth | None:
    with _lock:
        return _health.get(name)


def forget_nodes() -> None:
    with _lock:
        _health.clear()


def health_of(body: Mapping[str, Any]) -> NodeHealth:
    conditions = (body.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") == "True":
        return NodeHealth()
    since = ready.get("lastTransitionTime")
    return NodeHealth(
        ready=False,
        not_ready_since=datetime.fromisoformat(since.replace("Z", "+00:00")) if since else None,
        reason=ready.get("reason")
        or ("NodeUnreachable" if ready.get("status") == "Unknown" else None),
    )
