"""List-and-watch caches (informers) with server-side label selectors.

Each informer lists its resource once, then watches from that resourceVersion and keeps a
store of small records (a transform drops what decisions do not need, so 4,000 pods cost
little memory). Every change calls `on_change(key, old, new)`; a relist after the watch
expired (410 Gone) reports the differences, deletions included. Watches carry server and
client timeouts, so a silent connection is replaced rather than trusted forever.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger("diffusion_operator.informer")
R = TypeVar("R")
GONE = 410


@dataclass(frozen=True)
class WatchSource:
    """A list call of the typed client (bound method) and its leading arguments."""

    resource: str
    list_call: Callable[..., Any]
    args: tuple[Any, ...] = ()
    label_selector: str | None = None


@dataclass(frozen=True)
class WatchTimeouts:
    server_s: int = 240  # the API server ends the watch after this (then we re-watch)
    read_s: float = 300.0  # no byte for this long: the connection is dead
    connect_s: float = 5.0


def object_key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta.get('name')}" if namespace else str(meta.get("name"))


def resource_version_of(obj: dict[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:  # opaque by contract; etcd's are integers
        return 0


class Store(Generic[R]):
    """Records by key, with one secondary index (e.g. the owning job's key)."""

    def __init__(self, index_of: Callable[[R], str | None] | None = None) -> None:
        self._items: dict[str, R] = {}
        self._index: dict[str, set[str]] = {}
        self._index_of = index_of
        self._lock = threading.Lock()

    def get(self, key: str) -> R | None:
        with self._lock:
            return self._items.get(key)

    def list_keys(self) -> list[str]:
        with self._lock:
            return list(self._items)

    def values(self) -> list[R]:
        with self._lock:
            return list(self._items.values())

    def by_index(self, value: str) -> list[R]:
        with self._lock:
            return [self._items[k] for k in self._index.get(value, ()) if k in self._items]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def put(self, key: str, record: R | None) -> R | None:
        """Set (or with None, remove) a record; returns the previous one."""
        with self._lock:
            old = self._items.pop(key, None)
            self._unindex(key, old)
            if record is not None:
                self._items[key] = record
                if self._index_of is not None and (value := self._index_of(record)) is not None:
                    self._index.setdefault(value, set()).add(key)
            return old

    def _unindex(self, key: str, record: R | None) -> None:
        if record is None or self._index_of is None:
            return
        value = self._index_of(record)
        if value is not None and value in self._index:
            self._index[value].discard(key)
            if not self._index[value]:
                del self._index[value]


class Informer(Generic[R]):
    def __init__(
        self,
        source: WatchSource,
        transform: Callable[[dict[str, Any]], R | None],
        store: Store[R],
        *,
        on_change: Callable[[str, R | None, R | None], None],
        timeouts: WatchTimeouts,
        version_of: Callable[[R], int] | None = None,
    ) -> None:
        self.source, self.transform, self.store = source, transform, store
        self.on_change, self.timeouts = on_change, timeouts
        # Records we also write from API responses (our own status patches) carry a version:
        # a watch event older than what the store holds must not roll it back.
        self.version_of = version_of
        self.synced = threading.Event()
        self._keys: set[str] = set()  # what this informer put in the (maybe shared) store

    def run(self, stop: threading.Event) -> None:
        backoff_s = 0.5
        while not stop.is_set():
            try:
                version = self.relist()
                self.synced.set()
                backoff_s = 0.5
                while not stop.is_set():
                    version = self.watch_from(version, stop)
            except WatchExpiredError:
                continue  # relist at once
            except Exception as error:
                log.warning("watch of %s failed (%s); retrying", self.source.resource, error)
                stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 30.0)

    def request_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"_preload_content": False}
        if self.source.label_selector:
            kwargs["label_selector"] = self.source.label_selector
        return kwargs

    def relist(self) -> str:
        response = self.source.list_call(
            *self.source.args,
            **self.request_kwargs(),
            _request_timeout=(self.timeouts.connect_s, 60.0),
        )
        try:
            listing = json.loads(response.data)
        finally:
            response.release_conn()
        seen: set[str] = set()
        for obj in listing.get("items") or []:
            key = object_key(obj)
            seen.add(key)
            self.apply(key, self.transform(obj))
        for key in self._keys - seen:
            self.apply(key, None)
        return str((listing.get("metadata") or {}).get("resourceVersion") or "")

    def watch_from(self, version: str, stop: threading.Event) -> str:
        response = self.source.list_call(
            *self.source.args,
            **self.request_kwargs(),
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.timeouts.server_s,
            _request_timeout=(self.timeouts.connect_s, self.timeouts.read_s),
        )
        try:
            for line in iter_resp_lines(response):
                if stop.is_set():
                    break
                version = self.handle_event(json.loads(line), version)
        finally:
            response.release_conn()
        return version

    def handle_event(self, event: dict[str, Any], version: str) -> str:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == GONE:
                raise WatchExpiredError
            raise ApiException(status=obj.get("code"), reason=obj.get("message"))
        new_version = (obj.get("metadata") or {}).get("resourceVersion") or version
        if kind == "BOOKMARK":
            return str(new_version)
        key = object_key(obj)
        self.apply(key, None if kind == "DELETED" else self.transform(obj))
        return str(new_version)

    def apply(self, key: str, record: R | None) -> None:
        if record is not None and self.version_of is not None:
            held = self.store.get(key)
            if held is not None and self.version_of(held) > self.version_of(record):
                return
        if record is None:
            self._keys.discard(key)
        else:
            self._keys.add(key)
        old = self.store.put(key, record)
        if old != record:
            self.on_change(key, old, record)


class WatchExpiredError(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""
