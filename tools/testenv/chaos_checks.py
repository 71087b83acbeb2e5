"""What every chaos case checks once its job is over, and the watchers it needs meanwhile."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

from diffusion_operator.constants import NUM_FAILED_ATTEMPTS_KEPT
from testenv.chaos_report import record_incidents
from testenv.waiting import wait_until

ANNOTATION = "testenv.diffusion.dev/"


def annotations(**values: str) -> dict[str, str]:
    """testenv stage annotations: annotations(outcome="Failed", exit_code="1")."""
    return {ANNOTATION + key.replace("_", "-"): value for key, value in values.items()}


def trainer_summary(**fields) -> str:
    """A termination message as the trainer writes it (its JSON run summary)."""
    return json.dumps({"status": "failed", "exitCode": 1, "step": 0, **fields})


@dataclass
class CheckpointWatch:
    """Polls status.checkpoint.step in the background: it must never go backwards."""

    dtjs: object
    name: str
    steps: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> CheckpointWatch:
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()
        return self

    def poll(self) -> None:
        while not self.stop.wait(0.2):
            try:
                step = (self.dtjs.status(self.name).get("checkpoint") or {}).get("step")
            except Exception:  # the API server is busy: try again
                continue
            if step is not None and (not self.steps or self.steps[-1] != step):
                self.steps.append(step)

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        assert self.steps == sorted(self.steps), f"committed checkpoint went back: {self.steps}"


def event_reasons(dtjs, name: str) -> list[str]:
    events = dtjs.core.list_namespaced_event(
        dtjs.namespace, field_selector=f"involvedObject.name={name}"
    ).items
    return [e.reason for e in sorted(events, key=lambda e: e.metadata.creation_timestamp)]


def assert_recovered(
    dtjs,
    name: str,
    *,
    phase: str,
    attempt: int,
    restarts: int,
    disruptions: int = 0,
    reason: str | None = None,
    timeout_s: float = 120,
) -> dict:
    """The invariants of every chaos case: final phase, counters, reason in status and Events,
    and older attempts cleaned up (the latest failed ones keep their failed workers)."""
    status = dtjs.wait_phase(name, phase, timeout_s=timeout_s)
    assert status["attempt"] == attempt, status
    assert (status.get("restarts", 0), status.get("disruptions", 0)) == (restarts, disruptions)
    if reason is not None:
        assert status["lastFailure"]["reason"] == reason, status["lastFailure"]
        assert reason in event_reasons(dtjs, name)

    def old_attempts_cleaned_up():
        """Of older attempts, only the Jobs of the latest failed ones stay, holding their
        failed (or finished) workers for their logs: nothing that runs or terminates."""
        jobs = {attempt_of(j) for j in dtjs.jobs(name) if attempt_of(j) < attempt}
        pods = [p for p in dtjs.pods(name) if attempt_of(p) < attempt]
        settled = all(
            p.status.phase in ("Failed", "Succeeded") and not p.metadata.deletion_timestamp
            for p in pods
        )
        failed = sorted({attempt_of(p) for p in pods if p.status.phase == "Failed"})
        kept = set(failed[-NUM_FAILED_ATTEMPTS_KEPT:])
        return settled and jobs <= kept and {attempt_of(p) for p in pods} <= jobs

    wait_until(old_attempts_cleaned_up, 60, f"{name}'s attempts before {attempt} cleaned up")
    record_incidents(name, status)
    return status


def attempt_of(obj) -> int:
    return int(obj.metadata.labels["diffusion.dev/attempt"])


def finish(dtjs, pods, **values: str) -> None:
    for pod in pods:
        dtjs.annotate_pod(pod.metadata.name, annotations(**values))
