"""`kubectl dtj describe`: a job's spec summary, state, attempts and their failures, checkpoint,
progress, evaluation, goodput and recent events, as text."""

from __future__ import annotations

from typing import Any

from diffusion_operator.kubectl_plugin.table import age_text


def describe_text(job: dict[str, Any], events: list[dict[str, Any]]) -> str:
    spec, status = job.get("spec") or {}, job.get("status") or {}
    sections = [
        summary_lines(job["metadata"], spec, status),
        condition_lines(status.get("conditions") or []),
        attempt_lines(status),
        result_lines(status),
        event_lines(events),
    ]
    return "\n".join(line for section in sections for line in section) + "\n"


def summary_lines(meta: dict[str, Any], spec: dict[str, Any], status: dict[str, Any]) -> list[str]:
    resources, created = spec.get("resources") or {}, meta.get("creationTimestamp")
    gpus = resources.get("gpusPerNode", 8)
    per_node = resources.get("processesPerNode") or gpus or 1
    lines = [
        f"Name:         {meta['name']}",
        f"Namespace:    {meta['namespace']}",
        f"Created:      {created} ({age_text(created)} ago)",
        f"Preset:       {spec.get('preset') or '-'}",
        f"Image:        {spec.get('image', '-')}",
        f"Gang:         {resources.get('nodes', 1)} pod(s) x {per_node} process(es), "
        f"{gpus} GPU(s) per pod",
        f"Checkpoints:  {(spec.get('checkpoint') or {}).get('uri', '(operator default)')}",
        f"Suspended:    {bool((spec.get('runPolicy') or {}).get('suspend'))}",
        f"Phase:        {status.get('phase') or 'Pending'}",
    ]
    if status.get("specError"):
        lines.append(f"Spec error:   {status['specError']}")
    return lines


def condition_lines(conditions: list[dict[str, Any]]) -> list[str]:
    lines = ["Conditions:", "  TYPE          STATUS   REASON   MESSAGE"]
    for condition in conditions:
        lines.append(
            f"  {condition['type']:<13} {condition['status']:<8} {condition.get('reason', '')}"
            f"   {condition.get('message', '')}".rstrip()
        )
    return lines if conditions else ["Conditions:   none yet"]


def attempt_lines(status: dict[str, Any]) -> list[str]:
    workers = status.get("workers") or {}
    lines = [
        f"Attempt:      {status.get('attempt', 0)} (restarts {status.get('restarts', 0)}, "
        f"disruptions {status.get('disruptions', 0)}, rollbacks {status.get('rollbacks', 0)})",
        f"Workers:      {workers.get('ready', 0)}/{workers.get('desired', 0)} ready, "
        f"{workers.get('pending', 0)} pending, {workers.get('failed', 0)} failed",
    ]
    incidents = status.get("incidents") or []
    if incidents:
        lines.append("Failures:")
    for incident in incidents:
        lines.append(
            f"  attempt {incident['attempt']}: {incident['class']} {incident['reason']}"
            f" (failed {incident.get('failedAt', '-')}, lost "
            f"{incident.get('lostGpuSeconds', '-')} GPU-seconds)"
        )
    last = status.get("lastFailure")
    if last:
        exit_code = f", exit code {last['exitCode']}" if last.get("exitCode") is not None else ""
        lines.append(
            f"Last failure: attempt {last['attempt']}: {last.get('class', '-')} {last['reason']}"
            f" -> {last.get('action', '-')}{exit_code}: {last.get('message', '')}".rstrip()
        )
    return lines


def result_lines(status: dict[str, Any]) -> list[str]:
    progress, checkpoint = status.get("progress") or {}, status.get("checkpoint") or {}
    lines = [
        f"Progress:     step {progress.get('step', '-')}/{progress.get('totalSteps', '-')}, "
        f"loss {progress.get('loss', '-')}, {progress.get('imagesPerSecond', '-')} img/s, "
        f"ETA {progress.get('eta', '-')}",
        f"Checkpoint:   {checkpoint.get('latestUri', 'none yet')}"
        f" (step {checkpoint.get('step', '-')})",
    ]
    evaluation = status.get("eval")
    if evaluation:
        lines.append(
            f"Evaluation:   step {evaluation.get('step')}: FID {evaluation.get('fid')}, "
            f"CLIP score {evaluation.get('clipScore')}, grid {evaluation.get('grid', '-')}"
        )
    goodput = status.get("goodput")
    if goodput:
        lines.append(
            f"Goodput:      {goodput.get('ratio', '-')} ({goodput.get('productiveGpuSeconds', '-')}"
            f" of {goodput.get('allocatedGpuSeconds', '-')} GPU-seconds productive)"
        )
    return lines


def event_lines(events: list[dict[str, Any]]) -> list[str]:
    if not events:
        return ["Events:       none"]
    lines = ["Events:", "  LAST SEEN   TYPE      REASON   MESSAGE"]
    for event in events[-15:]:
        seen = event.get("lastTimestamp") or event.get("eventTime")
        lines.append(
            f"  {age_text(seen):<11} {event.get('type', ''):<9} {event.get('reason', '')}"
            f"   {event.get('message', '')}"
        )
    return lines
