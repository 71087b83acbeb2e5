"""The operator as its own process (`dtj operator`), as a Deployment's replica runs it: for
tests that kill replicas or cut their API connection."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from testenv.ports import free_port


@dataclass
class OperatorProcess:
    name: str
    process: subprocess.Popen
    health_port: int
    log_path: Path

    def probe(self, path: str) -> tuple[int, dict]:
        """(HTTP status, JSON body) of /healthz or /readyz; (0, {}) if nothing answers."""
        url = f"http://127.0.0.1:{self.health_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")
        except OSError:
            return 0, {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no lease release, as when a node dies."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_operator(
    name: str, kubeconfig: Path, namespace: str, log_dir: Path, **settings: str
) -> OperatorProcess:
    port = free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "DTJ_OPERATOR_NAMESPACES": namespace,
        "DTJ_OPERATOR_METRICS_PORT": "0",
        "DTJ_OPERATOR_LIVENESS_PORT": str(port),
        "DTJ_OPERATOR_PROGRESS_INTERVAL_S": "1",
        "DTJ_OPERATOR_IDENTITY": name,
        "DTJ_OPERATOR_LOG_FORMAT": "text",
        **{f"DTJ_OPERATOR_{key.upper()}": value for key, value in settings.items()},
    }
    log_path = log_dir / f"operator-{name}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "diffusion_operator.cli", "operator"],
        env=env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
    )
    return OperatorProcess(name, process, port, log_path)


def kubeconfig_via(kubeconfig: Path, port: int, out: Path) -> Path:
    """The same credentials, with the server reached through 127.0.0.1:port."""
    config = yaml.safe_load(kubeconfig.read_text())
    for cluster in config["clusters"]:
        server = cluster["cluster"]["server"]
        scheme, _, rest = server.partition("://")
        path = rest.partition("/")[2]
        cluster["cluster"]["server"] = f"{scheme}://127.0.0.1:{port}/{path}".rstrip("/")
    out.write_text(yaml.safe_dump(config))
    return out


class FreezableProxy:
    """A TCP proxy that can stop passing bytes while keeping every connection open: the
    half-open connection that a network partition or a wedged load balancer leaves."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.flowing = threading.Event()
        self.flowing.set()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self.accept_forever, daemon=True).start()

    def accept_forever(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self._sockets.append(client)
            if not self.flowing.is_set():
                continue  # accepted, never answered
            upstream = socket.create_connection(self.target)
            self._sockets.append(upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pipe, args=(source, sink), daemon=True).start()

    def pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self.flowing.wait()  # frozen: hold the bytes, the peer waits on
                sink.sendall(data)
        except OSError:
            return

    def freeze(self) -> None:
        self.flowing.clear()

    def close(self) -> None:
        self.flowing.set()
        self.server.close()
        for sock in self._sockets:
            sock.close()
