"""The agent: registers the Node, keeps it Ready, and runs the pods bound to it."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localnode.network import Bridge, HostsEntry, write_hosts
from localnode.pods import PodContext, PodRun, now_rfc3339, pod_key

log = logging.getLogger("localnode")
NODE_LABEL = "diffusion.dev/local-node"
HEARTBEAT_INTERVAL_S = 10.0
WATCH_TIMEOUT_S = 60
SHUTDOWN_GRACE_S = 10.0


@dataclass(frozen=True)
class AgentSettings:
    node_name: str
    state_dir: Path
    venv_bin: Path
    bridge_name: str = "dtj-br0"
    subnet: str = "10.77.0.0/24"
    netns_prefix: str = "dtj"
    # Untainted, the node takes any pod, as a fresh cluster's nodes do (the docs' first job).
    tainted: bool = True


def machine_memory_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    raise RuntimeError("no MemTotal in /proc/meminfo")


def node_conditions(now: str) -> list[dict[str, str]]:
    healthy = [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID"),
        ("Ready", "True", "KubeletReady"),
    ]
    return [
        {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": "localnode agent",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        for kind, status, reason in healthy
    ]


def build_node(settings: AgentSettings, address: str) -> dict[str, Any]:
    """No kwok annotation, so kwok leaves this Node to us; the taint (unless turned off) keeps
    other pods off."""
    capacity = {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{machine_memory_kib()}Ki",
        "pods": "110",
        "ephemeral-storage": "50Gi",
    }
    now = now_rfc3339()
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": settings.node_name,
            "labels": {
                "kubernetes.io/hostname": settings.node_name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                NODE_LABEL: "true",
            },
        },
        "spec": {"taints": [{"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"}]}
        if settings.tainted
        else {},
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": node_conditions(now),
            "addresses": [
                {"type": "InternalIP", "address": address},
                {"type": "Hostname", "address": settings.node_name},
            ],
            "nodeInfo": build_node_info(),
        },
    }


def build_node_info() -> dict[str, str]:
    uname = os.uname()
    machine_id = Path("/etc/machine-id")
    return {
        "architecture": "amd64",
        "bootID": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
        "containerRuntimeVersion": "localnode://0.1",
        "kernelVersion": uname.release,
        "kubeProxyVersion": "",
        "kubeletVersion": "localnode-0.1",
        "machineID": machine_id.read_text().strip() if machine_id.exists() else "",
        "operatingSystem": "linux",
        "osImage": f"{uname.sysname} (localnode)",
        "systemUUID": "",
    }


class Agent:
    def __init__(self, settings: AgentSettings, api_client: Any) -> None:
        from kubernetes import client

        self.settings = settings
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.bridge = Bridge(settings.bridge_name, settings.subnet, settings.netns_prefix)
        self.runs: dict[str, PodRun] = {}
        self.finished_uids: set[str] = set()
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.ctx = PodContext(
            node_name=settings.node_name,
            bridge=self.bridge,
            state_dir=settings.state_dir,
            venv_bin=settings.venv_bin,
            read_object=self.read_object,
            patch_status=self.patch_pod_status,
            delete_pod=self.delete_pod,
            hosts_changed=self.update_hosts,
        )

    # --- API access -------------------------------------------------------------------------
    def to_dict(self, obj: Any) -> dict[str, Any]:
        return self.api_client.sanitize_for_serialization(obj)

    def read_object(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        readers = {
            "ConfigMap": lambda: self.core.read_namespaced_config_map(name, namespace),
            "Secret": lambda: self.core.read_namespaced_secret(name, namespace),
            "PersistentVolumeClaim": lambda: self.core.read_namespaced_persistent_volume_claim(
                name, namespace
            ),
            "PersistentVolume": lambda: self.core.read_persistent_volume(name),
        }
        try:
            return self.to_dict(readers[kind]())
        except ApiException as error:
            if error.status == 404:
                raise LookupError(f"{kind} {namespace}/{name} not found") from error
            raise

    def patch_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod_status(name, namespace, {"status": status})

    def delete_pod(self, namespace: str, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        except ApiException as error:
            if error.status != 404:
                log.warning("deleting pod %s/%s: %s", namespace, name, error.reason)

    # --- Node -------------------------------------------------------------------------------
    def register_node(self) -> None:
        from kubernetes.client.exceptions import ApiException

        body = build_node(self.settings, self.bridge.gateway)
        try:
            self.core.create_node(body)
        except ApiException as error:
            if error.status != 409:
                raise
            self.core.patch_node(self.settings.node_name, {"spec": body["spec"]})
            self.core.patch_node_status(self.settings.node_name, {"status": body["status"]})
        log.info("node %s registered (Ready)", self.settings.node_name)

    def heartbeat(self) -> None:
        while not self.stopping.wait(HEARTBEAT_INTERVAL_S):
            try:
                status = {"conditions": node_conditions(now_rfc3339())}
                self.core.patch_node_status(self.settings.node_name, {"status": status})
            except Exception as error:
                log.warning("node heartbeat failed: %s", error)

    def remove_node(self) -> None:
        try:
            self.core.delete_node(self.settings.node_name)
        except Exception as error:
            log.warning("removing node %s: %s", self.settings.node_name, error)

    # --- Pods -------------------------------------------------------------------------------
    def handle_pod(self, pod: dict[str, Any], event_type: str) -> None:
        key, uid = pod_key(pod), pod["metadata"]["uid"]
        deleting = event_type == "DELETED" or bool(pod["metadata"].get("deletionTimestamp"))
        with self.lock:
            run = self.runs.get(key)
            if run is not None and run.pod["metadata"]["uid"] != uid:
                run = None  # a new pod with the old name; the old run ends on its own
            if run is not None:
                if deleting:
                    self.stop_in_background(run, pod, event_type)
            elif deleting:
                if event_type != "DELETED":  # nothing runs here: confirm the deletion
                    self.delete_pod(pod["metadata"]["namespace"], pod["metadata"]["name"])
            elif self.should_start(uid, pod):
                self.start_pod(key, pod)

    def should_start(self, uid: str, pod: dict[str, Any]) -> bool:
        """Stale events of a pod that ran here must not run it twice."""
        return not (uid in self.finished_uids or is_terminal(pod) or self.stopping.is_set())

    def stop_in_background(self, run: PodRun, pod: dict[str, Any], event_type: str) -> None:
        if run.stop_requested.is_set():
            return
        grace_s = pod["spec"].get("terminationGracePeriodSeconds", 30)
        if event_type == "DELETED":
            grace_s = 0  # force-deleted: the object is gone already
        threading.Thread(target=run.stop, args=(float(grace_s),), daemon=True).start()

    def start_pod(self, key: str, pod: dict[str, Any]) -> None:
        if len(pod["spec"]["containers"]) != 1 or pod["spec"].get("initContainers"):
            log.warning("pod %s: local mode runs exactly one container and no init containers", key)
        run = PodRun(pod, self.ctx)
        self.runs[key] = run
        thread = threading.Thread(target=self.run_pod, args=(key, run), name=key, daemon=True)
        thread.start()

    def run_pod(self, key: str, run: PodRun) -> None:
        run.run()
        with self.lock:
            self.finished_uids.add(run.pod["metadata"]["uid"])  # stale events must not rerun it
            if self.runs.get(key) is run:
                del self.runs[key]

    def update_hosts(self) -> None:
        """Every running pod's hosts file lists all local pods of its namespace and subdomain."""
        with self.lock:
            entries = {
                key: HostsEntry(
                    run.network.ip,
                    run.hostname(),
                    run.pod["spec"].get("subdomain") or "",
                    run.pod["metadata"]["namespace"],
                )
                for key, run in self.runs.items()
                if run.network is not None
            }
            for key, own in entries.items():
                peers = [
                    e
                    for e in entries.values()
                    if e.subdomain and (e.subdomain, e.namespace) == (own.subdomain, own.namespace)
                ]
                netns = self.runs[key].network.netns  # type: ignore[union-attr]
                write_hosts(netns, peers, own)

    def watch_pods(self) -> None:
        from kubernetes import watch

        selector = f"spec.nodeName={self.settings.node_name}"
        while not self.stopping.is_set():
            listing = self.core.list_pod_for_all_namespaces(field_selector=selector)
            for pod in listing.items:
                self.handle_pod(self.to_dict(pod), "ADDED")
            stream = watch.Watch()
            try:
                for event in stream.stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=listing.metadata.resource_version,
                    timeout_seconds=WATCH_TIMEOUT_S,
                ):
                    if self.stopping.is_set():
                        break
                    self.handle_pod(self.to_dict(event["object"]), event["type"])
            except Exception as error:
                if not self.stopping.is_set():
                    log.warning("pod watch interrupted (%s); listing again", error)
                    self.stopping.wait(1)

    # --- Lifecycle --------------------------------------------------------------------------
    def run_forever(self) -> None:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.bridge.create()
        self.register_node()
        threading.Thread(target=self.heartbeat, name="heartbeat", daemon=True).start()
        self.watch_pods()

    def shutdown(self) -> None:
        """Kill every pod's processes, report them, remove the Node and the bridge."""
        self.stopping.set()
        with self.lock:
            runs = list(self.runs.values())
        stoppers = [
            threading.Thread(target=run.stop, args=(SHUTDOWN_GRACE_S, False)) for run in runs
        ]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        for run in runs:
            run.finished.wait(30)
        self.remove_node()
        self.bridge.delete()
        log.info("agent stopped; %d pods stopped", len(runs))


def is_terminal(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
