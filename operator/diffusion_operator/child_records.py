"""Watch objects (plain JSON dicts) reduced to the facts decisions need, keyed to their job.

The watch caches keep these records, not the objects: a pod record is a few hundred bytes
where the object is tens of kilobytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from diffusion_operator import constants as c
from diffusion_operator.failures import parse_summary
from diffusion_operator.observed import AttemptJob, WorkerPod

Obj = dict[str, Any]


@dataclass(frozen=True)
class PodRecord:
    job_key: str
    job_uid: str | None  # None: made before the uid label existed
    pod: WorkerPod


@dataclass(frozen=True)
class JobRecord:
    job_key: str
    owner_uids: tuple[str, ...]
    job: AttemptJob


@dataclass(frozen=True)
class ChildRecord:
    """A ConfigMap or Service: whether it exists, whose it is and (ConfigMap) its data."""

    job_key: str
    owner_uids: tuple[str, ...]
    data_hash: str | None = None


def job_key_of(obj: Obj) -> str | None:
    meta = obj.get("metadata") or {}
    job_name = (meta.get("labels") or {}).get(c.LABEL_JOB_NAME)
    return f"{meta.get('namespace')}/{job_name}" if job_name else None


def owner_uids(obj: Obj) -> tuple[str, ...]:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return tuple(str(ref.get("uid")) for ref in refs)


def hash_data(data: dict[str, str] | None) -> str:
    return hashlib.sha256(json.dumps(data or {}, sort_keys=True).encode()).hexdigest()[:16]


def parse_timestamp(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def pod_record(obj: Obj) -> PodRecord | None:
    job_key = job_key_of(obj)
    if job_key is None:
        return None
    uid = ((obj.get("metadata") or {}).get("labels") or {}).get(c.LABEL_JOB_UID)
    return PodRecord(job_key, uid, to_worker_pod(obj))


def job_record(obj: Obj) -> JobRecord | None:
    job_key = job_key_of(obj)
    return None if job_key is None else JobRecord(job_key, owner_uids(obj), to_attempt_job(obj))


def config_map_record(obj: Obj) -> ChildRecord | None:
    job_key = job_key_of(obj)
    if job_key is None:
        return None
    return ChildRecord(job_key, owner_uids(obj), hash_data(obj.get("data")))


def service_record(obj: Obj) -> ChildRecord | None:
    job_key = job_key_of(obj)
    return None if job_key is None else ChildRecord(job_key, owner_uids(obj))


def training_job_record(obj: Obj) -> Obj:
    """The job as the API server has it, minus what no decision reads."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {**obj, "metadata": meta}


def to_attempt_job(obj: Obj) -> AttemptJob:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    true_conditions = [c for c in status.get("conditions") or [] if c.get("status") == "True"]
    true_types = {cond.get("type") for cond in true_conditions}
    failing = [c for c in true_conditions if c.get("type") in ("Failed", "FailureTarget")]
    return AttemptJob(
        name=meta["name"],
        attempt=int((meta.get("labels") or {}).get(c.LABEL_ATTEMPT, "0")),
        suspended=bool(spec.get("suspend")),
        complete="Complete" in true_types,
        failed="Failed" in true_types,
        deleting=meta.get("deletionTimestamp") is not None,
        spec_hash=(meta.get("annotations") or {}).get(c.ANNOTATION_SPEC_HASH),
        failure_target="FailureTarget" in true_types,
        failing_since=min(
            (t for c in failing if (t := parse_timestamp(c.get("lastTransitionTime")))),
            default=None,
        ),
    )


def to_worker_pod(obj: Obj) -> WorkerPod:
    meta, status = obj["metadata"], obj.get("status") or {}
    terminated, waiting_reason = container_state(status)
    conditions = {cond.get("type"): cond for cond in status.get("conditions") or []}
    scheduled = conditions.get("PodScheduled") or {}
    disruption = conditions.get("DisruptionTarget") or {}
    phase = status.get("phase") or "Pending"
    message = terminated.get("message")
    return WorkerPod(
        name=meta["name"],
        attempt=int((meta.get("labels") or {}).get(c.LABEL_ATTEMPT, "0")),
        index=int((meta.get("annotations") or {}).get(c.JOB_COMPLETION_INDEX_ANNOTATION, "0")),
        phase=phase,
        ready=(conditions.get("Ready") or {}).get("status") == "True",
        deleting=meta.get("deletionTimestamp") is not None,
        exit_code=terminated.get("exitCode"),
        exit_reason=terminated.get("reason"),
        exit_message=message,
        finished_at=parse_timestamp(terminated.get("finishedAt")),
        unschedulable_message=(
            scheduled.get("message")
            if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
            else None
        ),
        waiting_reason=waiting_reason,
        disruption_reason=(
            disruption.get("reason") if disruption.get("status") == "True" else None
        ),
        pod_ip=status.get("podIP"),
        node_name=(obj.get("spec") or {}).get("nodeName"),
        not_ready_since=not_ready_since(phase, conditions.get("Ready")),
        deletion_requested_at=deletion_requested_at(meta),
        uid=meta.get("uid") or "",
        summary=parse_summary(message) if terminated else None,
    )


def deletion_requested_at(meta: Obj) -> datetime | None:
    deleted_at = parse_timestamp(meta.get("deletionTimestamp"))
    if deleted_at is None:
        return None
    return deleted_at - timedelta(seconds=meta.get("deletionGracePeriodSeconds") or 0)


def not_ready_since(phase: str, ready: Obj | None) -> datetime | None:
    if phase != "Running" or ready is None or ready.get("status") == "True":
        return None
    return parse_timestamp(ready.get("lastTransitionTime"))


def container_state(status: Obj) -> tuple[Obj, str | None]:
    """The trainer container's terminated state ({} if none) and waiting reason."""
    for container in status.get("containerStatuses") or []:
        if container.get("name") != c.WORKER_CONTAINER:
            continue
        state = container.get("state") or {}
        return state.get("terminated") or {}, (state.get("waiting") or {}).get("reason")
    return {}, None
