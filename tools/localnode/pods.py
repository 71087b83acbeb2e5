"""One pod run as a local process: set up, start, supervise, stop, report, clean up."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from localnode.network import Bridge, PodNetwork, netns_pids
from localnode.podenv import container_argv, resolve_env
from localnode.volumes import Mount, VolumeError, materialise_volumes

log = logging.getLogger("localnode")
TOOLS_DIR = Path(__file__).resolve().parents[1]
PROJECT_DIR = TOOLS_DIR.parent
RUN_MOUNT = "/run/localnode"  # per-pod dir inside the pod: the termination message file
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MESSAGE_LIMIT = 4096
VOLUME_WAIT_S = 120
LOG_TAIL_LINES = 80


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_key(pod: dict[str, Any]) -> str:
    return f"{pod['metadata']['namespace']}_{pod['metadata']['name']}"


def exit_code_of(returncode: int) -> int:
    """Popen's -signo becomes 128+signo, as a container runtime reports it."""
    return 128 - returncode if returncode < 0 else returncode


def read_message(message_file: Path, log_file: Path, exit_code: int, policy: str) -> str:
    """The termination message; FallbackToLogsOnError uses the log tail on failure."""
    text = message_file.read_text(errors="replace") if message_file.exists() else ""
    if not text and exit_code != 0 and policy == "FallbackToLogsOnError" and log_file.exists():
        lines = log_file.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        text = "\n".join(lines)[-2048:]
    return text[:MESSAGE_LIMIT]


@dataclass
class PodContext:
    """What a pod run needs from the agent."""

    node_name: str
    bridge: Bridge
    state_dir: Path
    venv_bin: Path
    read_object: Callable[[str, str, str], dict[str, Any]]
    patch_status: Callable[[str, str, dict[str, Any]], None]
    delete_pod: Callable[[str, str], None]
    hosts_changed: Callable[[], None]


@dataclass
class PodRun:
    pod: dict[str, Any]
    ctx: PodContext
    network: PodNetwork | None = None
    process: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    stop_requested: threading.Event = field(default_factory=threading.Event)
    delete_when_stopped: bool = True
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def container(self) -> dict[str, Any]:
        return self.pod["spec"]["containers"][0]

    @property
    def pod_dir(self) -> Path:
        return self.ctx.state_dir / "pods" / pod_key(self.pod)

    @property
    def volumes_dir(self) -> Path:
        return self.ctx.state_dir / "volumes" / pod_key(self.pod)

    @property
    def log_file(self) -> Path:
        return self.pod_dir / f"{self.container['name']}.log"

    @property
    def message_file(self) -> Path:
        return self.volumes_dir / "run" / "termination-log"

    def hostname(self) -> str:
        return self.pod["spec"].get("hostname") or self.pod["metadata"]["name"]

    def run(self) -> None:
        """Thread body: start, wait, report, clean up; never raises."""
        name = pod_key(self.pod)
        try:
            self.start()
            returncode = self.process.wait() if self.process else 1
            self.kill_leftovers()
            self.report_terminated(exit_code_of(returncode))
        except Exception as error:
            log.exception("pod %s failed to run", name)
            self.kill_leftovers()
            self.report_terminated(128, reason="StartError", message=str(error)[:MESSAGE_LIMIT])
        finally:
            self.clean_up()
            self.finished.set()
        if self.stop_requested.is_set() and self.delete_when_stopped:
            self.ctx.delete_pod(self.pod["metadata"]["namespace"], self.pod["metadata"]["name"])

    def start(self) -> None:
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        self.write_meta()
        self.network = self.ctx.bridge.attach(self.pod["metadata"]["uid"])
        self.pod.setdefault("status", {})["podIP"] = self.network.ip
        self.ctx.hosts_changed()
        argv, env = self.command()
        mounts = self.wait_for_volumes()
        self.message_file.parent.mkdir(parents=True, exist_ok=True)
        mounts.append(Mount(RUN_MOUNT, str(self.message_file.parent)))
        mounts += keep_visible(mounts, [PROJECT_DIR, self.ctx.venv_bin.parent])
        launch = {
            "argv": argv,
            "env": env,
            "mounts": [m.to_dict() for m in mounts],
            "hostname": self.hostname(),
            "workingDir": self.container.get("workingDir"),
        }
        if self.stop_requested.is_set():
            raise RuntimeError("deleted before it started")
        self.spawn(launch)
        self.report_running()

    def wait_for_volumes(self) -> list[Mount]:
        """Like the kubelet, wait for a missing ConfigMap or an unbound claim to appear."""
        deadline = time.monotonic() + VOLUME_WAIT_S
        while True:
            try:
                return materialise_volumes(
                    self.pod, self.container, self.volumes_dir, self.ctx.read_object
                )
            except (VolumeError, LookupError):
                if time.monotonic() > deadline or self.stop_requested.wait(2):
                    raise

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = resolve_env(self.pod, self.container, self.read_secret)
        base = {
            "PATH": f"{self.ctx.venv_bin}:{SYSTEM_PATH}",
            "HOSTNAME": self.hostname(),
            "HOME": "/root",
            "DTJ_TERMINATION_LOG": f"{RUN_MOUNT}/termination-log",
            # Marks every process of this node's pods (found again via /proc/<pid>/environ).
            "LOCALNODE_NODE": self.ctx.node_name,
        }
        env = {**base, **env}
        return container_argv(self.container, env), env

    def read_secret(self, namespace: str, name: str) -> dict[str, str]:
        try:
            return dict(self.ctx.read_object("Secret", namespace, name).get("data") or {})
        except LookupError as error:
            raise KeyError(name) from error

    def spawn(self, launch: dict[str, Any]) -> None:
        assert self.network is not None
        launch_file = self.pod_dir / "launch.json"
        launch_file.write_text(json.dumps(launch, indent=1))
        init = [sys.executable, "-m", "localnode.podinit", str(launch_file)]
        argv = ["ip", "netns", "exec", self.network.netns, "unshare", "-m", "-u", *init]
        with self.log_file.open("ab") as log_handle:
            # A session of its own: the process group is the pod's, never the agent's.
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(TOOLS_DIR)},
            )
        self.started_at = now_rfc3339()
        log.info(
            "pod %s started: pid %d ip %s", pod_key(self.pod), self.process.pid, self.network.ip
        )

    def write_meta(self) -> None:
        meta = {key: self.pod["metadata"].get(key) for key in ("name", "namespace", "uid")}
        meta["labels"] = self.pod["metadata"].get("labels") or {}
        meta["annotations"] = self.pod["metadata"].get("annotations") or {}
        (self.pod_dir / "pod.json").write_text(json.dumps(meta, indent=1))

    def stop(self, grace_s: float, delete: bool = True) -> None:
        """SIGTERM the process group, SIGKILL whatever is left in the netns after grace_s;
        then the pod object is deleted (deletion) or kept with its status (agent shutdown)."""
        self.delete_when_stopped = delete
        self.stop_requested.set()
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
        if not self.finished.wait(grace_s) and self.process is not None:
            self.kill_leftovers()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def kill_leftovers(self) -> None:
        """torchrun starts its workers in sessions of their own: the netns finds them all."""
        if self.network is None:
            return
        for _ in range(50):
            pids = netns_pids(self.network.netns)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        log.error("pod %s: processes %s survive SIGKILL", pod_key(self.pod), pids)

    def report_running(self) -> None:
        assert self.network is not None
        ready = [
            {"type": kind, "status": "True", "lastTransitionTime": self.started_at}
            for kind in ("Initialized", "ContainersReady", "Ready")
        ]
        state = {"running": {"startedAt": self.started_at}}
        self.ctx.patch_status(
            self.pod["metadata"]["namespace"],
            self.pod["metadata"]["name"],
            {
                "phase": "Running",
                "podIP": self.network.ip,
                "podIPs": [{"ip": self.network.ip}],
                "hostIP": self.ctx.bridge.gateway,
                "startTime": self.started_at,
                "conditions": ready,
                "containerStatuses": [self.container_status(state, ready=True)],
            },
        )

    def container_status(self, state: dict[str, Any], ready: bool) -> dict[str, Any]:
        return {
            "name": self.container["name"],
            "image": self.container.get("image", ""),
            "imageID": "",
            "containerID": f"localnode://{self.pod['metadata']['uid']}",
            "ready": ready,
            "started": ready,
            "restartCount": 0,
            "state": state,
        }

    def report_terminated(self, exit_code: int, reason: str = "", message: str = "") -> None:
        policy = self.container.get("terminationMessagePolicy", "File")
        message = message or read_message(self.message_file, self.log_file, exit_code, policy)
        finished_at = now_rfc3339()
        terminated = {
            "exitCode": exit_code,
            "reason": reason or ("Completed" if exit_code == 0 else "Error"),
            "message": message,
            "startedAt": self.started_at or finished_at,
            "finishedAt": finished_at,
        }
        not_ready = [
            {
                "type": kind,
                "status": "False",
                "reason": "PodCompleted",
                "lastTransitionTime": finished_at,
            }
            for kind in ("ContainersReady", "Ready")
        ]
        status = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "conditions": not_ready,
            "containerStatuses": [self.container_status({"terminated": terminated}, ready=False)],
        }
        log.info("pod %s terminated: exit code %d", pod_key(self.pod), exit_code)
        try:
            self.ctx.patch_status(
                self.pod["metadata"]["namespace"], self.pod["metadata"]["name"], status
            )
        except Exception:
            log.warning("pod %s: could not write its terminal status", pod_key(self.pod))

    def clean_up(self) -> None:
        if self.network is not None:
            self.ctx.bridge.detach(self.network)
            self.network = None
            self.ctx.hosts_changed()
        shutil.rmtree(self.volumes_dir, ignore_errors=True)


def keep_visible(mounts: list[Mount], paths: list[Path]) -> list[Mount]:
    """Pods run from the project's checkout and venv: where a volume is mounted over them
    (a checkout under /tmp, say), bind them back on top, after the volumes."""
    extra: list[Mount] = []
    for path in (p.resolve() for p in paths):
        covered = any(path.is_relative_to(m.target) for m in mounts if m.target != "/")
        if covered and not any(path.is_relative_to(m.target) for m in extra):
            extra.append(Mount(target=str(path), source=str(path), read_only=True))
    return extra
