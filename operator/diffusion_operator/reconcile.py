"""One reconcile pass: read the job, observe its children, plan, act, report."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from logging import Logger, getLogger
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from diffusion_operator import metrics, names
from diffusion_operator.builders import Owner, build_config_map, build_service
from diffusion_operator.kube import NOT_FOUND, Kube, NameInUseError
from diffusion_operator.lifecycle import (
    JobEvent,
    JobState,
    Plan,
    plan_name_in_use,
    plan_reconcile,
    plan_refused_attempt,
)
from diffusion_operator.observed import Observed, WorkerPod
from diffusion_operator.pass_gate import exclusive_pass, forget_lock
from diffusion_operator.progress import (
    fold_reading,
    mark_stale,
    newer_checkpoint,
    progress_from_reading,
)
from diffusion_operator.progress_client import fetch_progress
from diffusion_operator.render import render_trainer_config
from diffusion_operator.settings import OperatorSettings
from diffusion_operator.spec import DiffusionTrainingJobSpec
from diffusion_operator.status_patch import dump_status, merge_patch, parse_status
from diffusion_operator.status_types import Progress
from diffusion_operator.timefmt import format_time
from diffusion_operator.worker_job import AttemptInputs, build_worker_job
from diffusion_trainer.config import ConfigError, TrainerConfig

package_log = getLogger("diffusion_operator")
INVALID = (400, 422)  # the API server refuses the object itself: retrying cannot help


class AttemptRefusedError(Exception):
    """The API server refused an attempt's Job as invalid; the message is the server's."""


def forget_job(key: str) -> None:
    """A deleted job: drop its lock and its per-job metric state."""
    forget_lock(key)
    metrics.forget_job_metrics(key)


def forget_vanished_jobs(live_keys: set[str]) -> None:
    """Drop metric state of jobs deleted while no DELETED event reached us (watch gaps). Locks
    stay: one might be in use, and a lock is a few bytes."""
    for key in metrics.tracked_job_keys() - live_keys:
        metrics.forget_job_metrics(key)


@dataclass(frozen=True)
class ParsedJob:
    spec: DiffusionTrainingJobSpec | None
    config: TrainerConfig | None
    error: str | None


def parse_spec(
    raw_spec: dict[str, Any], name: str, namespace: str, settings: OperatorSettings
) -> ParsedJob:
    """Validate the spec and render the trainer config; errors name the field to fix."""
    try:
        spec = DiffusionTrainingJobSpec.model_validate(raw_spec)
    except ValidationError as error:
        fields = "; ".join(
            f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()
        )
        return ParsedJob(None, None, f"invalid spec: {fields}")
    default_uri = f"{settings.default_checkpoint_root.rstrip('/')}/{namespace}/{name}"
    try:
        config = render_trainer_config(spec, name, namespace, default_uri)
    except ConfigError as error:
        return ParsedJob(spec, None, str(error))
    return ParsedJob(spec, config, None)


def reconcile(
    kube: Kube, namespace: str, name: str, settings: OperatorSettings, log: Logger
) -> Plan | None:
    """One pass for one job. The job is read inside the lock: a pass never acts on a status
    that an earlier pass has already changed. Status is written before the pass acts, so a
    crash in between leaves a status from which the next pass re-derives the missing actions
    (a restart that was counted but whose old Job was not yet deleted, say), never the reverse."""
    with exclusive_pass(f"{namespace}/{name}") as runs:
        if not runs:
            return None  # a pass queued for this job has not read anything yet: it covers us
        with metrics.RECONCILE_DURATION.time():
            return run_pass(kube, namespace, name, settings, log)


def run_pass(
    kube: Kube, namespace: str, name: str, settings: OperatorSettings, log: Logger
) -> Plan | None:
    try:
        body = kube.get_training_job(namespace, name)
    except ApiException as error:
        if error.status == NOT_FOUND:
            return None  # deleted: owner references clean up the children
        raise
    owner = Owner(name=name, namespace=namespace, uid=body["metadata"]["uid"])
    old_status: dict[str, Any] = body.get("status") or {}
    plan, observed = plan_for(body, owner, kube, settings)
    if observed is not None and plan.spec is not None:
        read_progress(plan, observed, owner, settings)
        record_metrics(plan, observed, owner)
    write_status(kube, owner, old_status, plan)
    post_events(plan, owner, kube, log)  # before acting: a failed action must not lose them
    try:
        execute_plan(plan, owner, kube)
    except (AttemptRefusedError, NameInUseError) as error:
        assert plan.spec is not None  # only raised by an attempt's creation
        job = JobState(name, namespace, body["metadata"].get("generation"), plan.spec, plan.status)
        now = datetime.now(UTC)
        if isinstance(error, NameInUseError):
            after = plan_name_in_use(job, error.job_name, now)
        else:
            after = plan_refused_attempt(job, str(error), now)
        write_status(kube, owner, dump_status(plan.status), after)
        post_events(after, owner, kube, log)
        return after
    return plan


def write_status(kube: Kube, owner: Owner, old_status: dict[str, Any], plan: Plan) -> None:
    """Only what this pass changed: never overwrite what others wrote meanwhile."""
    patch = merge_patch(old_status, dump_status(plan.status))
    if patch and not plan.delete_self:
        kube.patch_status(owner.namespace, owner.name, patch)


def api_error_message(error: ApiException) -> str:
    try:
        message = json.loads(error.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or error.reason)[:1000]


def plan_for(
    body: dict[str, Any], owner: Owner, kube: Kube, settings: OperatorSettings
) -> tuple[Plan, Observed | None]:
    meta = body["metadata"]
    status = parse_status(body.get("status"))
    parsed = parse_spec(body.get("spec") or {}, owner.name, owner.namespace, settings)
    if parsed.spec is None:
        events = (
            []
            if status.phase == "Failed"
            else [JobEvent("Warning", "InvalidSpec", parsed.error or "")]
        )
        status.phase, status.observed_generation = "Failed", meta.get("generation")
        return Plan(status=status, events=events), None
    terminal = status.phase in ("Succeeded", "Failed")
    if parsed.config is not None and not terminal:
        kube.apply_config_map(build_config_map(owner, parsed.config))
        kube.ensure_service(build_service(owner))
    job = JobState(
        owner.name, owner.namespace, meta.get("generation"), parsed.spec, status, parsed.error
    )
    observed = kube.observe(owner.namespace, owner.name, owner.uid)
    plan = plan_reconcile(job, observed, datetime.now(UTC))
    plan.spec = parsed.spec
    return plan, observed


def read_progress(plan: Plan, observed: Observed, owner: Owner, settings: OperatorSettings) -> None:
    """Fold rank 0's progress into status while the gang runs; unreachable means stale, and a
    reading of the wrong shape is dropped with a warning (the last good values stay)."""
    if plan.status.phase != "Running":
        return
    attempt = plan.status.attempt
    rank0 = next((p for p in observed.pods_of(attempt) if p.index == 0 and not p.deleting), None)
    reading = None
    if rank0 is not None and rank0.phase == "Running":
        reading = fetch_progress(progress_host(rank0, owner, attempt, settings))
    current = plan.status.progress.model_dump(by_alias=True) if plan.status.progress else None
    folded = mark_stale(current)
    if reading is not None:
        fresh = progress_from_reading(reading, format_time(datetime.now(UTC)))
        folded = fold_reading(current, fresh)
    try:
        plan.status.progress = None if folded is None else Progress.model_validate(folded)
    except ValidationError as error:
        package_log.warning("%s/%s: malformed progress: %s", owner.namespace, owner.name, error)
        stale = mark_stale(current)
        plan.status.progress = None if stale is None else Progress.model_validate(stale)
        return
    checkpoint = newer_checkpoint(plan.status.checkpoint, reading or {})
    if checkpoint:
        plan.status.checkpoint = checkpoint


def progress_host(pod: WorkerPod, owner: Owner, attempt: int, settings: OperatorSettings) -> str:
    if settings.progress_address == "service-dns" or not pod.pod_ip:
        return names.master_address(owner.name, attempt, owner.namespace)
    return pod.pod_ip


def record_metrics(plan: Plan, observed: Observed, owner: Owner) -> None:
    attempt = plan.status.attempt
    pods = observed.pods_of(attempt)
    key = f"{owner.namespace}/{owner.name}"
    metrics.record_worker_pods(key, [p.phase for p in observed.pods])
    running = len([p for p in pods if p.phase == "Running" and not p.deleting])
    gpus = plan.spec.resources.gpus_per_node if plan.spec else 0
    metrics.account_gpu_time(owner.namespace, owner.name, running, gpus, time.monotonic())
    metrics.record_attempt_end(owner.namespace, owner.name, plan.failure, plan.action)
    metrics.record_recovery(owner.namespace, owner.name, plan.incident_closed)


def post_events(plan: Plan, owner: Owner, kube: Kube, log: Logger) -> None:
    for event in plan.events:
        post_event(kube, owner, event, log)


def execute_plan(plan: Plan, owner: Owner, kube: Kube) -> None:
    for job_name in plan.delete_jobs:
        kube.delete_job(owner.namespace, job_name)
    for pod_name, pod_uid in plan.force_delete_pods:
        kube.force_delete_pod(owner.namespace, pod_name, pod_uid)
    for job_name, suspend in plan.set_suspend.items():
        kube.set_job_suspend(owner.namespace, job_name, suspend)
    if plan.create_attempt is not None and plan.spec is not None:
        body = build_worker_job(
            owner,
            plan.spec,
            AttemptInputs(
                attempt=plan.create_attempt,
                resume_from=plan.resume_from,
                suspend=plan.create_suspended,
                avoid_nodes=plan.avoid_nodes,
                trainer_env=plan.trainer_env,
            ),
        )
        try:
            kube.create_job(body)
        except ApiException as error:
            if error.status in INVALID:
                raise AttemptRefusedError(api_error_message(error)) from error
            raise
    if plan.delete_self:
        kube.delete_training_job(owner.namespace, owner.name)


def post_event(kube: Kube, owner: Owner, event: JobEvent, log: Logger) -> None:
    log.info("%s/%s %s: %s", owner.namespace, owner.name, event.reason, event.message)
    try:
        kube.post_event(owner, event.type, event.reason, event.message)
    except ApiException as error:  # an Event is never worth failing a pass
        log.warning("could not post event %s: %s", event.reason, error.reason)
