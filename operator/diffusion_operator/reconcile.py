"""One reconcile pass: take the job from the watch cache, make missing children, plan, act,
report. Reads cost no API request; writes happen only for what changed."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from logging import Logger
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from diffusion_operator import metrics
from diffusion_operator.api_errors import (
    CONFLICT,
    AttemptRefusedError,
    CreateRefusedError,
    refusals_as,
)
from diffusion_operator.builders import Owner, build_config_map, build_service
from diffusion_operator.cache import ClusterCache
from diffusion_operator.child_records import hash_data
from diffusion_operator.conditions import CREATE_REFUSED, set_condition
from diffusion_operator.kube import Kube, NameInUseError
from diffusion_operator.lifecycle import (
    JobEvent,
    JobState,
    Plan,
    plan_create_refused,
    plan_name_in_use,
    plan_reconcile,
    plan_refused_attempt,
)
from diffusion_operator.observed import Observed
from diffusion_operator.progress import (
    fold_reading,
    keep_last_good,
    mark_stale,
    newer_checkpoint,
    newer_eval,
    progress_from_reading,
)
from diffusion_operator.progress_poller import ProgressPoller
from diffusion_operator.render import render_trainer_config
from diffusion_operator.settings import OperatorSettings
from diffusion_operator.spec import DiffusionTrainingJobSpec
from diffusion_operator.status_patch import dump_status, merge_patch, parse_status
from diffusion_operator.status_types import Progress
from diffusion_operator.timefmt import format_time
from diffusion_operator.worker_job import AttemptInputs, build_worker_job
from diffusion_trainer.config import ConfigError, TrainerConfig

CONFLICT_RETRY_S = 0.2  # the watch brings the newer job within moments
# A pass that changed something is followed by one that sees the result: level-based
# convergence does not depend on an event for every step (our own status writes wake nobody).
CONFIRM_AFTER_S = 1.0


@dataclass(frozen=True)
class PassContext:
    kube: Kube
    cache: ClusterCache
    settings: OperatorSettings
    poller: ProgressPoller | None
    log: Logger


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
    refusal = service_account_refusal(spec.service_account_name, settings.allowed_service_accounts)
    if refusal:
        return ParsedJob(spec, None, refusal)
    default_uri = f"{settings.default_checkpoint_root.rstrip('/')}/{namespace}/{name}"
    try:
        config = render_trainer_config(spec, name, namespace, default_uri)
    except ConfigError as error:
        return ParsedJob(spec, None, str(error))
    return ParsedJob(spec, config, None)


def service_account_refusal(name: str | None, allowed: list[str] | None) -> str | None:
    """Why the workers may not run as `name`: the cluster admin's allowlist (chart value
    workerServiceAccount.allowed) decides which identities jobs may borrow."""
    if name is None or allowed is None or "*" in allowed or name in allowed:
        return None
    listed = ", ".join(allowed) or "none"
    return (
        f"spec.serviceAccountName {name!r} is not allowed for workers (allowed: {listed}; or"
        " leave it unset for the namespace's default); a cluster admin allows it with the"
        " chart value workerServiceAccount.allowed"
    )


def reconcile(ctx: PassContext, key: str) -> float | None:
    """One pass for one job; returns when to come back (seconds), if the plan asked.
    Status is written before the pass acts, with the resourceVersion it was read at: a crash
    in between leaves a status from which the next pass re-derives the missing actions, and
    a status someone else changed meanwhile is never overwritten (409: run again)."""
    body = ctx.cache.training_jobs.get(key)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None  # deleted: owner references clean up the children
    with metrics.RECONCILE_DURATION.time():
        try:
            plan = run_pass(ctx, body)
        except ApiException as error:
            if error.status == CONFLICT:
                return CONFLICT_RETRY_S
            raise
    if plan is None:
        return None
    if plan_acted(plan):
        return min(plan.requeue_after_s or CONFIRM_AFTER_S, CONFIRM_AFTER_S)
    return plan.requeue_after_s


def plan_acted(plan: Plan) -> bool:
    return bool(
        plan.wrote_status
        or plan.delete_jobs
        or plan.force_delete_pods
        or plan.set_suspend
        or plan.create_attempt is not None
    )


def run_pass(ctx: PassContext, body: dict[str, Any]) -> Plan | None:
    meta = body["metadata"]
    owner = Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])
    writer = StatusWriter(ctx, owner, body)
    plan, observed = plan_for(body, owner, ctx)
    if observed is not None and plan.spec is not None:
        read_progress(plan, owner, ctx.poller)
        record_metrics(plan, observed, owner)
    writer.write(plan)
    refusal: Exception | None = None
    try:
        execute_plan(plan, owner, ctx.kube)
    except (AttemptRefusedError, NameInUseError, CreateRefusedError) as error:
        refusal = error
    finally:  # after acting (the new attempt starts sooner), even when an action failed
        post_events(plan, owner, ctx.kube, ctx.log)
    if refusal is not None:
        after = plan_after_refusal(body, plan, refusal)
        writer.write(after)
        post_events(after, owner, ctx.kube, ctx.log)
        return after
    if observed is not None and plan.status.condition_message(CREATE_REFUSED) is not None:
        writer.write(clear_refusal(plan))
    return plan


def clear_refusal(plan: Plan) -> Plan:
    """Everything this pass made was accepted: the refusal is over."""
    plan.status.conditions = set_condition(
        plan.status.conditions,
        CREATE_REFUSED,
        status=False,
        reason="Accepted",
        message="",
        now=format_time(datetime.now(UTC)),
        generation=plan.status.observed_generation,
    )
    return plan


class StatusWriter:
    """Writes of one pass's status, each a merge patch against what the previous one left,
    guarded by the resourceVersion it was made from."""

    def __init__(self, ctx: PassContext, owner: Owner, body: dict[str, Any]) -> None:
        self.ctx, self.owner = ctx, owner
        self.status: dict[str, Any] = body.get("status") or {}
        self.version: str | None = body["metadata"].get("resourceVersion")

    def write(self, plan: Plan) -> None:
        new_status = dump_status(plan.status)
        patch = merge_patch(self.status, new_status)
        if not patch or plan.delete_self:
            return
        written = self.ctx.kube.patch_status(
            self.owner.namespace, self.owner.name, patch, self.version
        )
        self.status, self.version = new_status, written["metadata"].get("resourceVersion")
        self.ctx.cache.remember_written_job(written)
        plan.wrote_status = True


def generation(body: dict[str, Any]) -> int | None:
    return body["metadata"].get("generation")


def plan_after_refusal(body: dict[str, Any], plan: Plan, error: Exception) -> Plan:
    assert plan.spec is not None  # only raised by an attempt's creation
    meta = body["metadata"]
    job = JobState(meta["name"], meta["namespace"], generation(body), plan.spec, plan.status)
    now = datetime.now(UTC)
    if isinstance(error, NameInUseError):
        return plan_name_in_use(job, error.job_name, now)
    if isinstance(error, CreateRefusedError):
        return plan_refusal(job, error, now)
    return plan_refused_attempt(job, str(error), now)


def plan_refusal(job: JobState, error: CreateRefusedError, now: datetime) -> Plan:
    """The refused create in the job's status, and the pass again when the server said."""
    plan = plan_create_refused(job, error.what, error.message, now)
    plan.requeue_after_s = error.retry_after_s
    return plan


def plan_for(body: dict[str, Any], owner: Owner, ctx: PassContext) -> tuple[Plan, Observed | None]:
    status = parse_status(body.get("status"))
    parsed = parse_spec(body.get("spec") or {}, owner.name, owner.namespace, ctx.settings)
    if parsed.spec is None:
        events = (
            []
            if status.phase == "Failed"
            else [JobEvent("Warning", "InvalidSpec", parsed.error or "")]
        )
        status.phase, status.observed_generation = "Failed", generation(body)
        return Plan(status=status, events=events), None
    terminal = status.phase in ("Succeeded", "Failed")
    job = JobState(owner.name, owner.namespace, generation(body), parsed.spec, status, parsed.error)
    if parsed.config is not None and not terminal:
        try:
            ensure_children(ctx, owner, parsed.config)
        except CreateRefusedError as error:  # no observation: the refusal is the whole plan
            return plan_refusal(job, error, datetime.now(UTC)), None
    observed = ctx.cache.observe(owner.namespace, owner.name, owner.uid)
    observed = replace(observed, nodes=ctx.kube.nodes_of(observed.pods))
    plan = plan_reconcile(job, observed, datetime.now(UTC))
    plan.spec = parsed.spec
    return plan, observed


def ensure_children(ctx: PassContext, owner: Owner, config: TrainerConfig) -> None:
    """The ConfigMap and headless Service, made or updated only where the cache says they
    are missing or differ: a pass over a settled job writes nothing."""
    config_map = build_config_map(owner, config)
    name = config_map["metadata"]["name"]
    held = ctx.cache.config_maps.get(f"{owner.namespace}/{name}")
    with refusals_as(f"ConfigMap {name}"):
        if held is None:
            ctx.kube.create_config_map(config_map)
        elif held.data_hash != hash_data(config_map["data"]):
            ctx.kube.update_config_map(config_map)
    service = build_service(owner)
    name = service["metadata"]["name"]
    if ctx.cache.services.get(f"{owner.namespace}/{name}") is None:
        with refusals_as(f"Service {name}"):
            ctx.kube.create_service(service)


def read_progress(plan: Plan, owner: Owner, poller: ProgressPoller | None) -> None:
    """Fold rank 0's latest reading into status while the gang runs; no answer means stale.
    The poller validated the reading: only well-formed fields reach here."""
    if plan.status.phase != "Running" or poller is None:
        return
    reading = poller.reading_for(f"{owner.namespace}/{owner.name}", plan.status.attempt)
    if reading is None:
        return  # not read yet: keep what status says
    current = plan.status.progress.model_dump(by_alias=True) if plan.status.progress else None
    if reading.values is None:
        folded = mark_stale(current)
        values: dict[str, Any] = {}
    else:
        values = reading.values.model_dump(by_alias=True, exclude_none=True)
        fresh = keep_last_good(
            current, progress_from_reading(values, format_time(datetime.now(UTC)))
        )
        folded = fold_reading(current, fresh)
    plan.status.progress = None if folded is None else Progress.model_validate(folded)
    checkpoint = newer_checkpoint(plan.status.checkpoint, values)
    if checkpoint:
        plan.status.checkpoint = checkpoint
    evaluation = newer_eval(plan.status.eval, values)
    if evaluation:
        plan.status.eval = evaluation


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
        create_attempt(plan, owner, kube)
    if plan.delete_self:
        kube.delete_training_job(owner.namespace, owner.name)


def create_attempt(plan: Plan, owner: Owner, kube: Kube) -> None:
    assert plan.spec is not None and plan.create_attempt is not None
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
    with refusals_as(f"Job {body['metadata']['name']}", invalid_is_final=True):
        kube.create_job(body)


def post_event(kube: Kube, owner: Owner, event: JobEvent, log: Logger) -> None:
    log.info("%s/%s %s: %s", owner.namespace, owner.name, event.reason, event.message)
    try:
        kube.post_event(owner, event.type, event.reason, event.message)
    except ApiException as error:  # an Event is never worth failing a pass
        log.warning("could not post event %s: %s", event.reason, error.reason)
