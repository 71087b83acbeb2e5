"""kopf handlers: the only kopf-decorated code.

kopf runs the process (startup, cleanup, logging, signals); the controller (controller.py)
does the watching and reconciling, because it needs what kopf's watches lack: server-side
label selectors, caches that passes read instead of the API, a delaying work queue, and
leader election on a Lease. No finalizers: deleting a job never waits for the operator;
owner references clean up.
"""

from __future__ import annotations

import logging
from http.server import ThreadingHTTPServer
from typing import Any

import kopf

from diffusion_operator import metrics
from diffusion_operator.api_client import new_api_client
from diffusion_operator.controller import Controller, connections_needed
from diffusion_operator.health import Health, serve_health
from diffusion_operator.settings import load_settings

log = logging.getLogger("diffusion_operator")
_running: dict[str, Any] = {}  # the controller and health server of this process


@kopf.on.startup()
def start(settings: kopf.OperatorSettings, **_: Any) -> None:
    operator_settings = load_settings()
    settings.posting.enabled = False  # our own Events only, one per transition
    # The CRD is installed before the operator; a namespaced Role cannot list CRDs/namespaces.
    settings.scanning.disabled = True
    health = Health(stall_s=operator_settings.stall_timeout_s)
    port = operator_settings.liveness_port
    server = serve_health(health, port, extra=lambda: leader_info(_running)) if port else None
    try:
        controller = Controller(
            operator_settings, new_api_client(health, connections_needed(operator_settings))
        )
        metrics.serve(operator_settings.metrics_port)
        controller.start()
    except Exception:
        close_server(server)  # kopf retries the whole start
        raise
    _running.update(controller=controller, health_server=server)


def leader_info(running: dict[str, Any]) -> dict[str, object]:
    controller: Controller | None = running.get("controller")
    if controller is None:
        return {"leader": False, "holder": None}
    elector = controller.elector
    return {
        "leader": controller.is_leader(),
        "holder": elector.holder if elector is not None else None,
    }


@kopf.on.cleanup()
def stop(**_: Any) -> None:
    controller = _running.pop("controller", None)
    if controller is not None:
        controller.stop()
    close_server(_running.pop("health_server", None))


def close_server(server: ThreadingHTTPServer | None) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()
