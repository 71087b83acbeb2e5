"""Leader election on a coordination.k8s.io Lease: only the holder runs passes.

Like client-go's: a candidate takes the lease when it is free or when its holder has not
renewed it for `lease_s` by the candidate's own clock (no clock skew matters); writes carry the
resourceVersion, so two candidates never both win. The leader renews every `retry_s` and
steps down if it could not renew for `renew_deadline_s`, before anyone else may take over.
On shutdown the leader releases the lease, so a standby takes over at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("diffusion_operator.leader")
NOT_FOUND, CONFLICT = 404, 409


@dataclass(frozen=True)
class LeaseSettings:
    namespace: str
    name: str
    identity: str
    lease_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_s: float = 2.0


class LeaderElector:
    def __init__(
        self,
        api: client.CoordinationV1Api,
        settings: LeaseSettings,
        on_started: Callable[[], None],
        on_stopped: Callable[[], None],
    ) -> None:
        self.api, self.settings = api, settings
        self.on_started, self.on_stopped = on_started, on_stopped
        self.leading = threading.Event()
        self.known = threading.Event()  # a lease was read or written: we know who leads
        self.holder: str | None = None
        self._observed: tuple[str | None, str | None] | None = None  # (holder, renewTime)
        self._observed_at = 0.0
        self._renewed_at = 0.0

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                renewed = self.try_acquire_or_renew()
            except Exception as error:
                log.warning("lease %s: %s", self.settings.name, error)
                renewed = False
            if renewed:
                self._renewed_at = time.monotonic()
                if not self.is_leader:
                    log.info("became the leader (lease %s)", self.settings.name)
                    self.leading.set()
                    self.on_started()
            elif self.is_leader and self.renewal_overdue():
                self.step_down("could not renew the lease in time")
            stop.wait(self.settings.retry_s)
        if self.is_leader:
            self.release()
            self.step_down("shutting down")

    def renewal_overdue(self) -> bool:
        return time.monotonic() - self._renewed_at > self.settings.renew_deadline_s

    def step_down(self, why: str) -> None:
        log.warning("no longer the leader: %s", why)
        self.leading.clear()
        self.on_stopped()

    def try_acquire_or_renew(self) -> bool:
        s = self.settings
        try:
            lease = self.api.read_namespaced_lease(s.name, s.namespace)
        except ApiException as error:
            if error.status != NOT_FOUND:
                raise
            return self.create_lease()
        self.known.set()
        spec = lease.spec or client.V1LeaseSpec()
        renew_time = spec.renew_time.isoformat() if spec.renew_time else None
        record = (spec.holder_identity, renew_time)
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        self.holder = spec.holder_identity or None
        held_by_other = self.holder not in (None, s.identity)
        duration_s = spec.lease_duration_seconds or s.lease_s
        if held_by_other and time.monotonic() - self._observed_at < duration_s:
            return False
        return self.write_lease(lease, taking_over=self.holder != s.identity)

    def lease_spec(self, transitions: int) -> client.V1LeaseSpec:
        now = datetime.now(UTC)
        return client.V1LeaseSpec(
            holder_identity=self.settings.identity,
            lease_duration_seconds=int(self.settings.lease_s),
            acquire_time=now,
            renew_time=now,
            lease_transitions=transitions,
        )

    def create_lease(self) -> bool:
        s = self.settings
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=s.name, namespace=s.namespace),
            spec=self.lease_spec(0),
        )
        try:
            self.api.create_namespaced_lease(s.namespace, body)
        except ApiException as error:
            if error.status == CONFLICT:
                return False  # another candidate created it first
            raise
        self.known.set()
        self.holder = s.identity
        return True

    def write_lease(self, lease: client.V1Lease, taking_over: bool) -> bool:
        """Replace with the read resourceVersion: a concurrent writer makes this a 409."""
        old = lease.spec or client.V1LeaseSpec()
        transitions = (old.lease_transitions or 0) + (1 if taking_over else 0)
        spec = self.lease_spec(transitions)
        if not taking_over and old.acquire_time is not None:
            spec.acquire_time = old.acquire_time
        lease.spec = spec
        try:
            self.api.replace_namespaced_lease(self.settings.name, self.settings.namespace, lease)
        except ApiException as error:
            if error.status == CONFLICT:
                return False
            raise
        self.holder = self.settings.identity
        return True

    def release(self) -> None:
        """Hand the lease over now instead of after it expires."""
        s = self.settings
        try:
            lease = self.api.read_namespaced_lease(s.name, s.namespace)
            if lease.spec is None or lease.spec.holder_identity != s.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            self.api.replace_namespaced_lease(s.name, s.namespace, lease)
        except ApiException as error:
            log.warning("could not release the lease: %s", error.reason)
