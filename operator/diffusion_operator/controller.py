"""The operator's engine: watch caches feed a work queue of job keys; a bounded pool of
workers runs one pass per job at a time, only while this replica holds the lease.

Each job is reconciled when something about it changed (the job, a child, a worker's node, a
progress reading) or when its last plan asked to come back; a slow resync of every job is the
safety net, not the clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

from kubernetes import client

from diffusion_operator import metrics
from diffusion_operator.api_client import TimedApiClient
from diffusion_operator.cache import ClusterCache, build_informers, start_informers
from diffusion_operator.informer import WatchTimeouts
from diffusion_operator.kube import Kube, NotLeaderError
from diffusion_operator.leader import LeaderElector, LeaseSettings
from diffusion_operator.progress_poller import ProgressPoller
from diffusion_operator.reconcile import PassContext, reconcile
from diffusion_operator.settings import OperatorSettings, identity, lease_namespace
from diffusion_operator.workqueue import WorkQueue

log = logging.getLogger("diffusion_operator")
MAX_ERROR_BACKOFF_S = 60.0
CLOCK_S = 1.0  # how often idle workers wake: the liveness tick and phase gauges


def connections_needed(settings: OperatorSettings) -> int:
    """Five watches per namespace (or cluster) plus nodes, each holding a connection, and one
    per worker, the lease and the odd node read."""
    num_watches = 5 * max(len(settings.namespaces), 1) + 1
    return num_watches + settings.workers + 4


class Controller:
    def __init__(self, settings: OperatorSettings, api_client: TimedApiClient) -> None:
        self.settings, self.health = settings, api_client.health
        self.queue = WorkQueue()
        self.cache = ClusterCache()
        self.stop_event = threading.Event()
        self.elector = self.build_elector(api_client) if settings.leader_election else None
        self.kube = Kube(api_client, may_write=self.is_leader)
        self.poller = ProgressPoller(
            self.cache,
            interval_s=settings.progress_interval_s,
            address=settings.progress_address,
            on_changed=self.queue.add,
            is_active=self.is_leader,
        )
        self.informers = build_informers(
            self.cache,
            api_client=api_client,
            namespaces=settings.namespaces,
            watch_nodes=settings.watch_nodes,
            on_job=self.queue.add,
            timeouts=WatchTimeouts(
                server_s=settings.watch_server_timeout_s, read_s=settings.watch_client_timeout_s
            ),
        )
        self.context = PassContext(self.kube, self.cache, settings, self.poller, log)
        self._failures: Counter[str] = Counter()
        self._threads: list[threading.Thread] = []
        self.health.readiness_checks = {"cachesSynced": self.cache.synced}
        if self.elector is not None:
            self.health.readiness_checks["leaseKnown"] = self.elector.known.is_set

    def build_elector(self, api_client: client.ApiClient) -> LeaderElector:
        s = self.settings
        lease = LeaseSettings(
            namespace=lease_namespace(s),
            name=s.lease_name,
            identity=identity(s),
            lease_s=s.lease_duration_s,
            renew_deadline_s=s.lease_duration_s * 2 / 3,
            retry_s=max(s.lease_duration_s / 7.5, 0.5),
        )
        return LeaderElector(
            client.CoordinationV1Api(api_client),
            lease,
            on_started=self.enqueue_all,
            on_stopped=lambda: metrics.LEADER.set(0),
        )

    def is_leader(self) -> bool:
        return self.elector is None or self.elector.is_leader

    def start(self) -> None:
        # Watch threads end with their next read (at most the watch timeout): not joined.
        start_informers(self.informers, self.stop_event)
        if self.elector is not None:
            self.spawn("dtj-lease", self.elector.run, self.stop_event)
        else:
            self.spawn("dtj-enqueue-all", self.enqueue_all)
        for number in range(self.settings.workers):
            self.spawn(f"dtj-worker-{number}", self.work)
        self.spawn("dtj-clock", self.keep_time)
        self.spawn("dtj-progress", self.poller.run, self.stop_event)

    def spawn(self, name: str, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop passes, release the lease (a standby takes over at once), end the watches."""
        self.stop_event.set()
        self.queue.close()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(timeout=max(deadline - time.monotonic(), 0.1))

    def enqueue_all(self) -> None:
        """A new leader (or the safety net) looks at every job once caches are complete."""
        while not self.cache.synced():
            if self.stop_event.wait(0.2):
                return
        metrics.LEADER.set(1 if self.is_leader() else 0)
        for key in self.cache.training_jobs.list_keys():
            self.queue.add(key)

    def keep_time(self) -> None:
        next_resync = time.monotonic() + self.settings.resync_interval_s
        while not self.stop_event.wait(CLOCK_S):
            self.health.tick()
            self.publish_gauges()
            if time.monotonic() >= next_resync:
                next_resync = time.monotonic() + self.settings.resync_interval_s
                if self.is_leader():
                    self.enqueue_all()

    def publish_gauges(self) -> None:
        bodies = self.cache.training_jobs.values()
        metrics.record_job_phases([(b.get("status") or {}).get("phase") for b in bodies])
        metrics.QUEUE_DEPTH.set(self.queue.num_due())
        live = {f"{b['metadata']['namespace']}/{b['metadata']['name']}" for b in bodies}
        if self.cache.synced():
            for key in metrics.forget_vanished_jobs(live):
                self.forget(key)

    def forget(self, key: str) -> None:
        metrics.forget_job_metrics(key)
        self.poller.forget(key)
        self._failures.pop(key, None)

    def work(self) -> None:
        while not self.stop_event.is_set():
            key = self.queue.get(timeout_s=CLOCK_S)
            if key is None:
                continue
            try:
                if self.is_leader() and self.cache.synced():
                    self.run_pass(key)
            finally:
                self.queue.done(key)

    def run_pass(self, key: str) -> None:
        self.health.pass_started()
        try:
            requeue_after_s = reconcile(self.context, key)
        except NotLeaderError:
            return  # the new leader looks at every job
        except Exception as error:  # the loop must outlive API outages and bugs
            self.retry_later(key, error)
            return
        finally:
            self.health.pass_finished()
        self._failures.pop(key, None)
        if self.cache.training_jobs.get(key) is None:
            self.forget(key)
        elif requeue_after_s is not None:
            self.queue.add_after(key, requeue_after_s)

    def retry_later(self, key: str, error: Exception) -> None:
        """Exponential backoff per job: a job that keeps failing never starves the others."""
        self._failures[key] += 1
        delay_s = min(0.5 * 2 ** (self._failures[key] - 1), MAX_ERROR_BACKOFF_S)
        if isinstance(error, client.exceptions.ApiException):
            log.warning(
                "pass of %s failed (%s %s); retrying in %.1fs",
                key,
                error.status,
                error.reason,
                delay_s,
            )
        else:
            log.exception("pass of %s failed; retrying in %.1fs", key, delay_s)
        self.queue.add_after(key, delay_s)
