"""metav1.Condition bookkeeping: one condition per phase-like type, transitions timestamped."""

from __future__ import annotations

from typing import Any

CONDITION_TYPES = ("Running", "Restarting", "Suspended", "Succeeded", "Failed")


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    *,
    status: bool,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """Return conditions with `type_` set; lastTransitionTime changes only when status does."""
    status_text = "True" if status else "False"
    updated: list[dict[str, Any]] = []
    found = False
    for condition in conditions:
        if condition.get("type") != type_:
            updated.append(condition)
            continue
        found = True
        changed = condition.get("status") != status_text
        updated.append(
            {
                "type": type_,
                "status": status_text,
                "reason": reason,
                "message": message,
                "lastTransitionTime": now if changed else condition.get("lastTransitionTime", now),
                "observedGeneration": generation,
            }
        )
    if not found:
        updated.append(
            {
                "type": type_,
                "status": status_text,
                "reason": reason,
                "message": message,
                "lastTransitionTime": now,
                "observedGeneration": generation,
            }
        )
    return updated


def conditions_for_phase(
    conditions: list[dict[str, Any]],
    phase: str,
    *,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """The condition named like the phase is True with the reason; the others are False with
    the phase as reason. A phase without a condition of its own (Pending) reports its reason
    and message through the Running condition."""
    for type_ in CONDITION_TYPES:
        active = type_ == phase
        explains = active or (type_ == "Running" and phase not in CONDITION_TYPES)
        conditions = set_condition(
            conditions,
            type_,
            status=active,
            reason=reason if explains else phase,
            message=message if explains else "",
            now=now,
            generation=generation,
        )
    return conditions
