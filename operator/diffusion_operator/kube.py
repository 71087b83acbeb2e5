"""All Kubernetes API I/O of the operator: observe a job's children and act on them."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from diffusion_operator import constants as c
from diffusion_operator.builders import Owner
from diffusion_operator.metrics import API_ERRORS
from diffusion_operator.node_health import health_of, known_health
from diffusion_operator.observed import NodeHealth, WorkerPod

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


class NotLeaderError(Exception):
    """A write was about to be made without holding the lease."""


def guarded(method: Callable[..., T]) -> Callable[..., T]:
    """Writes only while leading: a replica that lost its lease mid-pass stops writing."""

    @functools.wraps(method)
    def wrapper(self: Kube, *args: Any, **kwargs: Any) -> T:
        if not self.may_write():
            raise NotLeaderError(method.__name__)
        return method(self, *args, **kwargs)

    return wrapper


class Kube:
    """Thin wrapper over the typed clients; every method is idempotent. Reads of jobs and
    their children come from the watch caches (cache.py), not from here."""

    def __init__(
        self, api_client: client.ApiClient, may_write: Callable[[], bool] = lambda: True
    ) -> None:
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.may_write = may_write

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
    @guarded
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
    @guarded
    def create_config_map(self, body: dict[str, Any]) -> None:
        """Create, or if it exists after all (the cache lags), set its data."""
        try:
            self.core.create_namespaced_config_map(
                body["metadata"]["namespace"], body, _preload_content=False
            )
        except ApiException as error:
            _ignore(CONFLICT, error)
            self.update_config_map(body)

    @counted
    @guarded
    def update_config_map(self, body: dict[str, Any]) -> None:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        self.core.patch_namespaced_config_map(name, namespace, {"data": body["data"]})

    @counted
    @guarded
    def create_service(self, body: dict[str, Any]) -> None:
        try:
            self.core.create_namespaced_service(
                body["metadata"]["namespace"], body, _preload_content=False
            )
        except ApiException as error:
            _ignore(CONFLICT, error)

    @counted
    @guarded
    def create_job(self, body: dict[str, Any]) -> None:
        """Create, or accept the Job of this name if it is already ours (a retried pass)."""
        meta = body["metadata"]
        try:
            # The answer is not read: decoding a Job into typed objects costs more CPU than the
            # request itself, and the watch brings the Job anyway.
            self.batch.create_namespaced_job(meta["namespace"], body, _preload_content=False)
        except ApiException as error:
            _ignore(CONFLICT, error)
            existing = self.batch.read_namespaced_job(meta["name"], meta["namespace"])
            if not is_owned_by(existing, meta["ownerReferences"][0]["uid"]):
                raise NameInUseError(meta["name"]) from error

    @counted
    @guarded
    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except ApiException as error:
            _ignore(NOT_FOUND, error)

    @counted
    @guarded
    def set_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        self.batch.patch_namespaced_job(name, namespace, {"spec": {"suspend": suspend}})

    @counted
    @guarded
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
        self.core.create_namespaced_event(owner.namespace, body, _preload_content=False)

    @counted
    @guarded
    def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None
    ) -> dict[str, Any]:
        """A merge patch of status; with the resourceVersion it is read from, a 409 if anyone
        wrote the job since (the pass then runs again on what is there now)."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return self.custom.patch_namespaced_custom_object_status(
            c.GROUP, c.VERSION, namespace, c.PLURAL, name, body
        )

    @counted
    @guarded
    def delete_training_job(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(
                c.GROUP, c.VERSION, namespace, c.PLURAL, name, propagation_policy="Background"
            )
        except ApiException as error:
            _ignore(NOT_FOUND, error)


def looks_unwell(pod: WorkerPod) -> bool:
    return pod.not_ready_since is not None or pod.deleting
