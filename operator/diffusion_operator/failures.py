"""Why an attempt ended, and what to do about it (pure).

Every end of an attempt gets a class and a CamelCase reason, from the workers' pod status and
conditions, their nodes, the worker Job's conditions and the trainer's termination message (its
JSON run summary). The class picks a default action; `spec.failurePolicy.rules` override it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from diffusion_operator.observed import WorkerPod
from diffusion_operator.spec import FailureAction, FailureClass, FailurePolicy

DEFAULT_ACTIONS: dict[FailureClass, FailureAction] = {
    "Disruption": "RestartNotCounted",
    "ConfigError": "Fail",
    "NonFinite": "Rollback",
    "OOMKilled": "Fail",
    "Hang": "Restart",
    "Error": "Restart",
}
# Trainer exit codes (diffusion_trainer.report) when the trainer is the container's process.
EXIT_CLASSES: dict[int, FailureClass] = {2: "ConfigError", 3: "NonFinite", 4: "Hang"}
SIGTERM_EXIT = 143
TRAINER_CLASSES: tuple[FailureClass, ...] = ("ConfigError", "NonFinite", "Hang")
# Which failure explains an attempt's end when several workers failed: what the trainer said
# first, then the node or cluster, then the earliest plain error (its peers fail after it).
PRIORITY: tuple[FailureClass, ...] = (
    "ConfigError",
    "NonFinite",
    "Hang",
    "OOMKilled",
    "Disruption",
    "Error",
)
HOST_OOM_HINT = (
    "lower spec.training.microBatchSize, set spec.training.activationCheckpointing: true, "
    "or raise spec.resources.memory"
)
GPU_OOM_HINT = (
    "lower spec.training.microBatchSize or set spec.training.activationCheckpointing: true"
)
GPU_OOM_MARKERS = ("CUDA out of memory", "OutOfMemoryError")
# A worker stopped by SIGTERM, deleted with no disruption condition, or gone: most often the
# Job controller stopping (and removing) the gang's other workers after one failed. It explains
# an attempt's end only when nothing else does.
COLLATERAL_REASONS = ("WorkerTerminated", "WorkerTerminating", "WorkerLost")


@dataclass(frozen=True)
class Failure:
    failure_class: FailureClass
    reason: str
    message: str
    exit_code: int | None = None
    failed_at: datetime | None = None  # when it happened, as far as the cluster knows
    node_name: str | None = None  # a node to avoid next time (node failures only)
    step: int | None = None  # the step the trainer reached, from its summary


def parse_summary(message: str | None) -> dict[str, Any] | None:
    """The trainer's JSON run summary, if the termination message is one."""
    if not message or not message.lstrip().startswith("{"):
        return None
    try:
        payload = json.loads(message)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def classify_pod(pod: WorkerPod) -> Failure:
    """The failure of one worker that ended (or is ending)."""
    where = f"worker {pod.index} (pod {pod.name})"
    summary = pod.summary or {}
    step = summary.get("step") if isinstance(summary.get("step"), int) else None
    detail = summary_text(pod)
    declared = summary.get("failureClass")
    if declared in TRAINER_CLASSES:
        return Failure(
            declared, declared, f"{where}: {detail}", pod.exit_code, pod.finished_at, step=step
        )
    if pod.exit_code in EXIT_CLASSES:
        klass = EXIT_CLASSES[pod.exit_code]
        return Failure(
            klass, klass, f"{where}: {detail}", pod.exit_code, pod.finished_at, step=step
        )
    if pod.disruption_reason:
        message = f"{where} was disrupted: {pod.disruption_reason}"
        return Failure(
            "Disruption", pod.disruption_reason, message, pod.exit_code, pod.finished_at, step=step
        )
    if pod.exit_reason == "OOMKilled":
        message = f"{where} was OOMKilled (exit code {pod.exit_code}): {HOST_OOM_HINT}"
        return Failure("OOMKilled", "OOMKilled", message, pod.exit_code, pod.finished_at)
    if any(marker in detail for marker in GPU_OOM_MARKERS):
        message = f"{where} ran out of GPU memory: {GPU_OOM_HINT}; {detail}"
        return Failure("OOMKilled", "GpuOutOfMemory", message, pod.exit_code, pod.finished_at)
    if pod.exit_code == SIGTERM_EXIT or summary.get("status") == "preempted":
        message = f"{where} was stopped by SIGTERM (deleted or drained)"
        return Failure(
            "Disruption", "WorkerTerminated", message, pod.exit_code, pod.finished_at, step=step
        )
    message = f"{where} failed with exit code {pod.exit_code}"
    if pod.exit_reason and pod.exit_reason != "Error":
        message += f" ({pod.exit_reason})"
    if detail:
        message += f": {detail}"
    return Failure("Error", "WorkerFailed", message, pod.exit_code, pod.finished_at, step=step)


def summary_text(pod: WorkerPod) -> str:
    """What the worker said last: the summary's message, else the raw termination message."""
    summary = pod.summary
    if summary is not None:
        return str(summary.get("message") or summary.get("status") or "")[:500]
    return (pod.exit_message or "").strip()[-500:]


def node_failure(pod: WorkerPod, reason: str, detail: str, since: datetime | None) -> Failure:
    message = f"worker {pod.index} (pod {pod.name}) on node {pod.node_name}: {detail}"
    return Failure("Disruption", reason, message, failed_at=since, node_name=pod.node_name)


def explanatory_rank(failure: Failure) -> int:
    if failure.reason in COLLATERAL_REASONS:
        return len(PRIORITY)
    return PRIORITY.index(failure.failure_class)


def most_telling(failures: list[Failure]) -> Failure | None:
    """The failure that explains the attempt's end best (see PRIORITY)."""
    if not failures:
        return None
    return min(
        failures,
        key=lambda f: (
            explanatory_rank(f),
            f.failed_at.timestamp() if f.failed_at else float("inf"),
        ),
    )


def is_conclusive(failure: Failure) -> bool:
    """A failure that no later news from the other workers could explain better."""
    return explanatory_rank(failure) < PRIORITY.index("Error")


def rule_matches(rule: Any, failure: Failure) -> bool:
    criteria = (
        (rule.on_classes, failure.failure_class),
        (rule.on_reasons, failure.reason),
        (rule.on_exit_codes, failure.exit_code),
    )
    given = [(values, actual) for values, actual in criteria if values]
    return bool(given) and all(actual in values for values, actual in given)


def choose_action(policy: FailurePolicy, failure: Failure) -> FailureAction:
    """The first matching rule's action, else the class's default."""
    for rule in policy.rules:
        if rule_matches(rule, failure):
            return rule.action
    return DEFAULT_ACTIONS[failure.failure_class]
