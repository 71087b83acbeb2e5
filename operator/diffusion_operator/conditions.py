"""metav1.Condition bookkeeping: one condition per phase-like type, transitions timestamped."""

from __future__ import annotations

from typing import Literal

from diffusion_operator.status_types import Condition

CONDITION_TYPES = ("Running", "Restarting", "Suspended", "Succeeded", "Failed")
# Not a phase: True while the API server refuses a create (quota, policy, rate limit).
CREATE_REFUSED = "CreateRefused"


def set_condition(
    conditions: list[Condition],
    type_: str,
    *,
    status: bool,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> list[Condition]:
    """Return conditions with `type_` set; lastTransitionTime changes only when status does."""
    status_text: Literal["True", "False"] = "True" if status else "False"
    updated: list[Condition] = []
    found = False
    for condition in conditions:
        if condition.type != type_:
            updated.append(condition)
            continue
        found = True
        changed = condition.status != status_text
        updated.append(
            Condition(
                type=type_,
                status=status_text,
                reason=reason,
                message=message,
                last_transition_time=now if changed else (condition.last_transition_time or now),
                observed_generation=generation,
            )
        )
    if not found:
        updated.append(
            Condition(
                type=type_,
                status=status_text,
                reason=reason,
                message=message,
                last_transition_time=now,
                observed_generation=generation,
            )
        )
    return updated


def conditions_for_phase(
    conditions: list[Condition],
    phase: str,
    *,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> list[Condition]:
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
