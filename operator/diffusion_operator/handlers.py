"""kopf handlers: the only kopf-decorated code.

kopf is the event source only: every event on a job or on one of its children, and a periodic
resync, runs the same level-based reconcile pass, which reads the job afresh. No kopf timers and
no finalizers: deleting a job never waits for the operator; owner references clean up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes import client, config

from diffusion_operator import constants as c
from diffusion_operator import metrics
from diffusion_operator.kube import Kube
from diffusion_operator.node_health import record_node
from diffusion_operator.reconcile import forget_job, forget_vanished_jobs, reconcile
from diffusion_operator.settings import OperatorSettings, load_settings

log = logging.getLogger("diffusion_operator")
_kube: Kube | None = None
_settings = OperatorSettings()  # replaced by the environment's at startup
_resync: tuple[threading.Thread, threading.Event] | None = None


def kube() -> Kube:
    global _kube  # noqa: PLW0603 - one API client per operator process
    if _kube is None:
        try:
            config.load_incluster_config()
            api_client = client.ApiClient()
        except config.ConfigException:
            api_client = config.new_client_from_config()
        _kube = Kube(api_client)
    return _kube


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _settings  # noqa: PLW0603 - settings are read when the operator starts
    _settings = load_settings()
    settings.posting.enabled = False  # our own Events only, one per transition
    # The CRD is installed before the operator; a namespaced Role cannot list CRDs/namespaces.
    settings.scanning.disabled = True
    settings.watching.server_timeout = _settings.watch_server_timeout_s
    settings.watching.client_timeout = _settings.watch_client_timeout_s
    settings.watching.connect_timeout = 30
    settings.execution.max_workers = 16
    kube()
    metrics.serve(_settings.metrics_port)
    start_resync()


def start_resync() -> None:
    global _resync  # noqa: PLW0603 - one resync loop per running operator
    stop_resync()
    stop = threading.Event()
    thread = threading.Thread(target=resync_forever, args=(stop,), name="dtj-resync", daemon=True)
    thread.start()
    _resync = (thread, stop)


def stop_resync() -> None:
    global _resync  # noqa: PLW0603
    if _resync is not None:
        thread, stop = _resync
        stop.set()
        thread.join(timeout=30)
        _resync = None


@kopf.on.cleanup()
def stop(**_: Any) -> None:
    stop_resync()


@kopf.on.probe(id="api")
def probe_api(**_: Any) -> str:
    return str(kube().core.api_client.configuration.host)


def reconcile_safely(namespace: str, name: str, logger: logging.Logger | Any) -> None:
    """One pass; whatever goes wrong is logged and retried by the next pass, never raised:
    the resync loop is the operator's only clock and must outlive API outages and bugs."""
    try:
        reconcile(kube(), namespace, name, _settings, logger)
    except client.exceptions.ApiException as error:
        logger.warning(
            "reconcile of %s/%s failed, retried on the next pass: %s %s",
            namespace,
            name,
            error.status,
            error.reason,
        )
    except Exception:  # e.g. urllib3 connection errors while the API server restarts
        logger.exception("reconcile of %s/%s failed, retried on the next pass", namespace, name)


def is_own_status_write(event_type: str | None, body: Mapping[str, Any]) -> bool:
    """A modification that leaves the spec as last reconciled: our own status patch, most
    often. Reacting to it would feed back (each pass patches progress, each patch is an event);
    child events and the resync cover everything else."""
    generation = (body.get("metadata") or {}).get("generation")
    observed = (body.get("status") or {}).get("observedGeneration")
    return event_type == "MODIFIED" and generation is not None and generation == observed


@kopf.on.event(c.GROUP, c.VERSION, c.PLURAL, id="training-job")
def on_training_job(
    type: str,
    namespace: str | None,
    name: str | None,
    body: Mapping[str, Any],
    logger: Any,
    **_: Any,
) -> None:
    if not (namespace and name):
        return
    if type == "DELETED":
        forget_job(f"{namespace}/{name}")
        return
    if not is_own_status_write(type, body):
        reconcile_safely(namespace, name, logger)


@kopf.on.event("batch", "v1", "jobs", labels={c.LABEL_MANAGED_BY: c.MANAGED_BY}, id="attempt-job")
@kopf.on.event("v1", "pods", labels={c.LABEL_MANAGED_BY: c.MANAGED_BY}, id="worker-pod")
def on_child(namespace: str | None, labels: Mapping[str, str], logger: Any, **_: Any) -> None:
    job_name = labels.get(c.LABEL_JOB_NAME)
    if job_name and namespace:
        reconcile_safely(namespace, job_name, logger)


def on_node(type: str | None, name: str | None, body: Mapping[str, Any], **_: Any) -> None:
    """Node health for every pass; passes read it, the resync acts on it."""
    if name:
        record_node(name, None if type == "DELETED" else body)


if load_settings().watch_nodes:  # off where the operator may not list/watch nodes
    kopf.on.event("v1", "nodes", id="node-health")(on_node)


def job_key(body: Mapping[str, Any]) -> str:
    return f"{body['metadata']['namespace']}/{body['metadata']['name']}"


def resync_forever(stop: threading.Event) -> None:
    """Level-based safety net: re-derive every job's state even if no event arrives."""
    while not stop.wait(_settings.reconcile_interval_s):
        try:
            resync_once(stop)
        except Exception:  # the loop is the operator's clock: it must never end early
            log.exception("resync pass failed; the next one follows")


def resync_once(stop: threading.Event) -> None:
    try:
        bodies = kube().list_training_jobs(_settings.namespaces)
    except Exception as error:  # API outage: nothing to do until it is back
        log.warning("resync: cannot list jobs: %s", error)
        return
    metrics.record_job_phases([(b.get("status") or {}).get("phase") for b in bodies])
    forget_vanished_jobs({job_key(body) for body in bodies})
    for body in bodies:
        if stop.is_set():
            return
        meta = body["metadata"]
        reconcile_safely(meta["namespace"], meta["name"], log)
