"""Liveness and readiness: what the probes see, and the HTTP server that shows it.

Live: the work loop's clock ticked, some API request succeeded, and no pass is stuck, each
within `stall_s`. A half-open connection to the API server fails requests by timeout and
stops the successes, so the probe fails and the kubelet restarts the operator.
Ready: every watch cache listed once, and the leader election has an answer (leading, or
following a known leader): a standby that can take over is ready, so a PodDisruptionBudget
over two replicas lets a node drain proceed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Health:
    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        now = time.monotonic()
        self._last_api_success = now
        self._last_tick = now
        self._passes: dict[int, float] = {}  # thread id -> start of its pass
        self._lock = threading.Lock()
        self.readiness_checks: dict[str, Callable[[], bool]] = {}

    def record_api_success(self) -> None:
        self._last_api_success = time.monotonic()

    def tick(self) -> None:
        self._last_tick = time.monotonic()

    def pass_started(self) -> None:
        with self._lock:
            self._passes[threading.get_ident()] = time.monotonic()

    def pass_finished(self) -> None:
        with self._lock:
            self._passes.pop(threading.get_ident(), None)

    def liveness(self) -> dict[str, float]:
        """Seconds since each sign of life (the oldest pass counts its age)."""
        now = time.monotonic()
        with self._lock:
            oldest_pass = min(self._passes.values(), default=now)
        return {
            "apiSuccessAgoSeconds": round(now - self._last_api_success, 1),
            "tickAgoSeconds": round(now - self._last_tick, 1),
            "longestPassSeconds": round(now - oldest_pass, 1),
        }

    def is_live(self) -> bool:
        return all(age < self.stall_s for age in self.liveness().values())

    def readiness(self) -> dict[str, bool]:
        return {name: check() for name, check in self.readiness_checks.items()}

    def is_ready(self) -> bool:
        return bool(self.readiness_checks) and all(self.readiness().values())


def serve_health(
    health: Health, port: int, extra: Callable[[], dict[str, object]] | None = None
) -> ThreadingHTTPServer:
    """/healthz (liveness) and /readyz (readiness) on all interfaces; 200 or 503, JSON body."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body: dict[str, object]
            if self.path.startswith("/healthz"):
                ok, body = health.is_live(), dict(health.liveness())
            elif self.path.startswith("/readyz"):
                ok, body = health.is_ready(), dict(health.readiness())
            else:
                self.send_error(404)
                return
            body.update(extra() if extra else {})
            payload = json.dumps(body).encode()
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_: object) -> None:  # probes every few seconds: not worth a line
            return

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="dtj-health", daemon=True).start()
    return server
