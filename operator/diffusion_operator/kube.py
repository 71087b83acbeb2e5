"""All Kubernetes API I/O of the operator: observe a job's children and act on them."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from diffusion_operator import constants as c
from diffusion_operator.builders import Owner
from diffusion_operator.failures import parse_summary
from diffusion_operator.metrics import API_ERRORS
from diffusion_operator.node_health import health_of, known_health
from diffusion_operator.observed import AttemptJob, NodeHealth, Observed, WorkerPod

NOT_FOUND = 404
CONFLICT = 409
FORBIDDEN = 403
T = TypeVar("T")


def _ignore(status: int, error: ApiException) -> None:
    if error.status != status:
        raise error


def counted(method: Callable[..., T]) -> Callable[..., T]:
    """Count API errors by operation (expected 404/409s are handled inside and not counted)."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, **kwargs)
        except ApiException:
            API_ERRORS.labels(operation=method.__name__).inc()
            raise

    return wrapper


class NameInUseError(Exception):
    """A Job of the attempt's name belongs to someone else (a deleted job of the same name)."""

    def __init__(self, job_name: str) -> None:
        super().__init__(job_name)
        self.job_name = job_name


def is_owned_by(obj: Any, owner_uid: str) -> bool:
    return any(ref.uid == owner_uid for ref in obj.metadata.owner_references or [])


def is_labelled_for(pod: Any, owner_uid: str) -> bool:
    """Pods made before the uid label existed count as the current job's."""
    uid = (pod.metadata.labels or {}).get(c.LABEL_JOB_UID)
    return uid is None or uid == owner_uid


class Kube:
    """Thin wrapper over the typed clients; every method is idempotent."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    @counted
    def observe(self, namespace: str, job_name: str, owner_uid: str) -> Observed:
        """The worker Jobs and pods of this incarnation of the job (by uid, not only name)."""
        selector = f"{c.LABEL_JOB_NAME}={job_name},{c.LABEL_ROLE}=worker"
        jobs = self.batch.list_namespaced_job(namespace, label_selector=selector).items
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        ours = [to_worker_pod(p) for p in pods if is_labelled_for(p, owner_uid)]
        return Observed(
            jobs=[to_attempt_job(j) for j in jobs if is_owned_by(j, owner_uid)],
            pods=ours,
            num_foreign_pods=len(pods) - len(ours),
            nodes=self.nodes_of(ours),
        )

    def nodes_of(self, pods: list[WorkerPod]) -> dict[str, NodeHealth]:
        """What the node watch knows of the workers' nodes; a node it has not seen (deleted
        before the operator started, or no watch) is read, for unwell workers only."""
        health: dict[str, NodeHealth] = {}
        unseen: set[str] = set()
        for pod in pods:
            if not pod.node_name or pod.node_name in health:
                continue
            known = known_health(pod.node_name)
            if known is not None:
                health[pod.node_name] = known
            elif looks_unwell(pod):
                unseen.add(pod.node_name)
        return {**health, **self.read_nodes(unseen)}

    def read_nodes(self, names: set[str]) -> dict[str, NodeHealth]:
        """Without the permission to read nodes, the pods' own Ready condition is all there is
        to go on."""
        health: dict[str, NodeHealth] = {}
        for name in sorted(names):
            try:
                node = self.core.read_node(name)
                health[name] = health_of(self.core.api_client.sanitize_for_serialization(node))
            except ApiException as error:
                if error.status == NOT_FOUND:
                    health[name] = NodeHealth(exists=False, ready=False)
                elif error.status != FORBIDDEN:
                    raise
        return health

    @counted
    def force_delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """Delete with no grace: for a pod whose node will never confirm it stopped. The uid
        precondition never removes a newer pod of the same name."""
        try:
            self.core.delete_namespaced_pod(
                name,
                namespace,
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
                ),
            )
        except ApiException as error:
            if error.status not in (NOT_FOUND, CONFLICT):
                raise

    @counted
    def apply_config_map(self, body: dict[str, Any]) -> None:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            self.core.create_namespaced_config_map(namespace, body)
        except ApiException as error:
            _ignore(CONFLICT, error)
            self.core.patch_namespaced_config_map(name, namespace, {"data": body["data"]})

    @counted
    def ensure_service(self, body: dict[str, Any]) -> None:
        try:
            self.core.create_namespaced_service(body["metadata"]["namespace"], body)
        except ApiException as error:
            _ignore(CONFLICT, error)

    @counted
    def create_job(self, body: dict[str, Any]) -> None:
        """Create, or accept the Job of this name if it is already ours (a retried pass)."""
        meta = body["metadata"]
        try:
            self.batch.create_namespaced_job(meta["namespace"], body)
        except ApiException as error:
            _ignore(CONFLICT, error)
            existing = self.batch.read_namespaced_job(meta["name"], meta["namespace"])
            if not is_owned_by(existing, meta["ownerReferences"][0]["uid"]):
                raise NameInUseError(meta["name"]) from error

    @counted
    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except ApiException as error:
            _ignore(NOT_FOUND, error)

    @counted
    def set_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        self.batch.patch_namespaced_job(name, namespace, {"spec": {"suspend": suspend}})

    @counted
    def post_event(self, owner: Owner, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the DiffusionTrainingJob."""
        now = datetime.now(UTC)
        body = {
            "metadata": {"generateName": f"{owner.name}.", "namespace": owner.namespace},
            "involvedObject": {
                "apiVersion": c.API_VERSION,
                "kind": c.KIND,
                "name": owner.name,
                "namespace": owner.namespace,
                "uid": owner.uid,
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": c.MANAGED_BY},
            "reportingComponent": c.MANAGED_BY,
            "reportingInstance": c.MANAGED_BY,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self.core.create_namespaced_event(owner.namespace, body)

    @counted
    def get_training_job(self, namespace: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.PLURAL, name
        )

    @counted
    def list_training_jobs(self, namespaces: list[str]) -> list[dict[str, Any]]:
        if not namespaces:
            return self.custom.list_cluster_custom_object(c.GROUP, c.VERSION, c.PLURAL)["items"]
        items: list[dict[str, Any]] = []
        for namespace in namespaces:
            items += self.custom.list_namespaced_custom_object(
                c.GROUP, c.VERSION, namespace, c.PLURAL
            )["items"]
        return items

    @counted
    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            c.GROUP, c.VERSION, namespace, c.PLURAL, name, {"status": status}
        )

    @counted
    def delete_training_job(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(
                c.GROUP, c.VERSION, namespace, c.PLURAL, name, propagation_policy="Background"
            )
        except ApiException as error:
            _ignore(NOT_FOUND, error)


def to_attempt_job(job: client.V1Job) -> AttemptJob:
    conditions = {
        cond.type: cond.status == "True" for cond in (job.status.conditions or []) if job.status
    }
    return AttemptJob(
        name=job.metadata.name,
        attempt=int(job.metadata.labels.get(c.LABEL_ATTEMPT, "0")),
        suspended=bool(job.spec.suspend),
        complete=conditions.get("Complete", False),
        failed=conditions.get("Failed", False),
        deleting=job.metadata.deletion_timestamp is not None,
        spec_hash=(job.metadata.annotations or {}).get(c.ANNOTATION_SPEC_HASH),
        failure_target=conditions.get("FailureTarget", False),
    )


def looks_unwell(pod: WorkerPod) -> bool:
    return pod.not_ready_since is not None or pod.deleting


def to_worker_pod(pod: client.V1Pod) -> WorkerPod:
    annotations = pod.metadata.annotations or {}
    status = pod.status or client.V1PodStatus()
    terminated, waiting_reason = _container_state(status)
    conditions = {cond.type: cond for cond in status.conditions or []}
    scheduled = conditions.get("PodScheduled")
    disruption = conditions.get("DisruptionTarget")
    return WorkerPod(
        name=pod.metadata.name,
        attempt=int((pod.metadata.labels or {}).get(c.LABEL_ATTEMPT, "0")),
        index=int(annotations.get(c.JOB_COMPLETION_INDEX_ANNOTATION, "0")),
        phase=status.phase or "Pending",
        ready=bool(conditions.get("Ready") and conditions["Ready"].status == "True"),
        deleting=pod.metadata.deletion_timestamp is not None,
        exit_code=terminated.exit_code if terminated else None,
        exit_reason=terminated.reason if terminated else None,
        exit_message=terminated.message if terminated else None,
        finished_at=terminated.finished_at if terminated else None,
        unschedulable_message=(
            scheduled.message
            if scheduled and scheduled.status == "False" and scheduled.reason == "Unschedulable"
            else None
        ),
        waiting_reason=waiting_reason,
        disruption_reason=(
            disruption.reason if disruption and disruption.status == "True" else None
        ),
        pod_ip=status.pod_ip,
        node_name=pod.spec.node_name if pod.spec else None,
        not_ready_since=_not_ready_since(status, conditions.get("Ready")),
        deletion_requested_at=_deletion_requested_at(pod.metadata),
        uid=pod.metadata.uid or "",
        summary=parse_summary(terminated.message) if terminated else None,
    )


def _deletion_requested_at(meta: client.V1ObjectMeta) -> datetime | None:
    if meta.deletion_timestamp is None:
        return None
    return meta.deletion_timestamp - timedelta(seconds=meta.deletion_grace_period_seconds or 0)


def _not_ready_since(status: client.V1PodStatus, ready: Any) -> datetime | None:
    if status.phase != "Running" or ready is None or ready.status == "True":
        return None
    return ready.last_transition_time


def _container_state(
    status: client.V1PodStatus,
) -> tuple[client.V1ContainerStateTerminated | None, str | None]:
    for container in status.container_statuses or []:
        if container.name != c.WORKER_CONTAINER or container.state is None:
            continue
        waiting = container.state.waiting
        return container.state.terminated, waiting.reason if waiting else None
    return None, None
