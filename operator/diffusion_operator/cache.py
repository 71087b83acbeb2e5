"""The operator's view of the cluster: one watch cache per resource, indexed by job.

Passes read jobs and their children from here, never by listing: a pass costs API requests
only for what it changes. Children are watched with a server-side label selector (only what
the operator made streams to it), jobs and nodes in full.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from diffusion_operator import constants as c
from diffusion_operator.child_records import (
    ChildRecord,
    JobRecord,
    PodRecord,
    config_map_record,
    job_record,
    pod_record,
    service_record,
    training_job_record,
)
from diffusion_operator.informer import (
    Informer,
    Store,
    WatchSource,
    WatchTimeouts,
    resource_version_of,
)
from diffusion_operator.node_health import record_node
from diffusion_operator.observed import Observed

MANAGED = f"{c.LABEL_MANAGED_BY}={c.MANAGED_BY}"
# What a change means to the controller: the key of the job to look at, or None.
ChangeHandler = Callable[[str], None]


def job_of(record: Any) -> str | None:
    return getattr(record, "job_key", None)


@dataclass
class ClusterCache:
    training_jobs: Store[dict[str, Any]] = field(default_factory=Store)
    pods: Store[PodRecord] = field(default_factory=lambda: Store(job_of))
    jobs: Store[JobRecord] = field(default_factory=lambda: Store(job_of))
    config_maps: Store[ChildRecord] = field(default_factory=Store)
    services: Store[ChildRecord] = field(default_factory=Store)
    informers: list[Informer[Any]] = field(default_factory=list)

    def synced(self) -> bool:
        return bool(self.informers) and all(i.synced.is_set() for i in self.informers)

    def observe(self, namespace: str, name: str, owner_uid: str) -> Observed:
        """The worker Jobs and pods of this incarnation of the job (by uid, not only name)."""
        key = f"{namespace}/{name}"
        pods = self.pods.by_index(key)
        ours = [r.pod for r in pods if r.job_uid is None or r.job_uid == owner_uid]
        return Observed(
            jobs=[r.job for r in self.jobs.by_index(key) if owner_uid in r.owner_uids],
            pods=ours,
            num_foreign_pods=len(pods) - len(ours),
        )

    def remember_written_job(self, body: dict[str, Any]) -> None:
        """Our own write's answer is newer than the watch's last word: later passes read it."""
        key = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
        held = self.training_jobs.get(key)
        if held is None or resource_version_of(held) < resource_version_of(body):
            self.training_jobs.put(key, training_job_record(body))


def training_job_changed(old: dict[str, Any] | None, new: dict[str, Any] | None) -> bool:
    """Worth a pass: a new or deleted job, a spec edit (generation), a deletion mark, or a
    status that a pass did not write (observedGeneration behind). Our own status writes are
    not: reacting to them would feed back."""
    if old is None or new is None:
        return True
    old_meta, new_meta = old.get("metadata") or {}, new.get("metadata") or {}
    if old_meta.get("generation") != new_meta.get("generation"):
        return True
    if old_meta.get("deletionTimestamp") != new_meta.get("deletionTimestamp"):
        return True
    observed = (new.get("status") or {}).get("observedGeneration")
    return observed is None or observed != new_meta.get("generation")


def build_informers(
    cache: ClusterCache,
    *,
    api_client: client.ApiClient,
    namespaces: list[str],
    watch_nodes: bool,
    on_job: ChangeHandler,
    timeouts: WatchTimeouts,
) -> list[Informer[Any]]:
    core, batch = client.CoreV1Api(api_client), client.BatchV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)

    def on_training_job(key: str, old: Any, new: Any) -> None:
        if training_job_changed(old, new):
            on_job(key)

    def on_child(_: str, old: Any, new: Any) -> None:
        for job_key in {job_of(old), job_of(new)} - {None}:
            on_job(str(job_key))

    informers: list[Informer[Any]] = []
    scopes: list[str | None] = list(namespaces) or [None]
    for scope in scopes:
        sources = child_sources(core, batch, custom, scope)
        informers.append(
            Informer(
                sources["training_jobs"],
                training_job_record,
                cache.training_jobs,
                on_change=on_training_job,
                timeouts=timeouts,
                version_of=resource_version_of,
            )
        )
        informers.append(
            Informer(sources["pods"], pod_record, cache.pods, on_change=on_child, timeouts=timeouts)
        )
        informers.append(
            Informer(sources["jobs"], job_record, cache.jobs, on_change=on_child, timeouts=timeouts)
        )
        informers.append(
            Informer(
                sources["config_maps"],
                config_map_record,
                cache.config_maps,
                on_change=on_child,
                timeouts=timeouts,
            )
        )
        informers.append(
            Informer(
                sources["services"],
                service_record,
                cache.services,
                on_change=on_child,
                timeouts=timeouts,
            )
        )
    if watch_nodes:
        informers.append(node_informer(core, timeouts, lambda node: on_node(cache, node, on_job)))
    cache.informers = informers
    return informers


def child_sources(
    core: client.CoreV1Api,
    batch: client.BatchV1Api,
    custom: client.CustomObjectsApi,
    namespace: str | None,
) -> dict[str, WatchSource]:
    """Namespaced list calls, or the all-namespaces ones when the operator is cluster-wide."""
    ns: tuple[str, ...] = (namespace,) if namespace else ()
    crd = (c.GROUP, c.VERSION, *ns, c.PLURAL)
    if namespace:
        calls = (
            custom.list_namespaced_custom_object,
            core.list_namespaced_pod,
            batch.list_namespaced_job,
            core.list_namespaced_config_map,
            core.list_namespaced_service,
        )
    else:
        calls = (
            custom.list_cluster_custom_object,
            core.list_pod_for_all_namespaces,
            batch.list_job_for_all_namespaces,
            core.list_config_map_for_all_namespaces,
            core.list_service_for_all_namespaces,
        )
    workers = f"{MANAGED},{c.LABEL_ROLE}=worker"
    return {
        "training_jobs": WatchSource(c.PLURAL, calls[0], crd),
        "pods": WatchSource("pods", calls[1], ns, workers),
        "jobs": WatchSource("jobs", calls[2], ns, workers),
        "config_maps": WatchSource("configmaps", calls[3], ns, MANAGED),
        "services": WatchSource("services", calls[4], ns, MANAGED),
    }


def on_node(cache: ClusterCache, node_name: str, on_job: ChangeHandler) -> None:
    """A node's health changed: wake the jobs with workers there."""
    for record in cache.pods.values():
        if record.pod.node_name == node_name:
            on_job(record.job_key)


def node_conditions(obj: dict[str, Any]) -> dict[str, Any]:
    """Only what health depends on: heartbeat times change every few seconds and would
    make every heartbeat look like news."""
    conditions = [
        {k: v for k, v in cond.items() if k != "lastHeartbeatTime"}
        for cond in (obj.get("status") or {}).get("conditions") or []
    ]
    return {"status": {"conditions": conditions}}


def node_informer(
    core: client.CoreV1Api, timeouts: WatchTimeouts, on_changed: Callable[[str], None]
) -> Informer[Any]:
    def on_node_change(name: str, _: Any, new: Any) -> None:
        record_node(name, new)
        on_changed(name)

    return Informer(
        WatchSource("nodes", core.list_node),
        node_conditions,
        Store(),
        on_change=on_node_change,
        timeouts=timeouts,
    )


def start_informers(
    informers: list[Informer[Any]], stop: threading.Event
) -> list[threading.Thread]:
    threads = []
    for informer in informers:
        thread = threading.Thread(
            target=informer.run,
            args=(stop,),
            name=f"dtj-watch-{informer.source.resource}",
            daemon=True,
        )
        thread.start()
        threads.append(thread)
    return threads
