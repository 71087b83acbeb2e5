"""The operator at fleet scale: N jobs on the local control plane, two designs side by side.

N DiffusionTrainingJobs of 4 workers each run on the real local control plane with kwok A100
nodes, against the working tree's operator ("current") and a git ref's ("baseline").

Per design and N it reports apply -> worker Job and apply -> all workers Running (p50/p99, timed
by this script's own watches, not by 1 s creationTimestamps), worker failure -> next attempt's
Job (p99), the operator's peak RSS and CPU seconds, and API requests per job per minute at steady
state from the API server's apiserver_request_total (raw, and net of the traffic while the
operator is SIGSTOPped for half a window before and half after):

    .venv/bin/python tools/bench/operator_scale.py [--sizes 100,300,1000]
        [--designs current,baseline] [--baseline-ref 877287c] [--quick] [--out PATH]

It reuses a running control plane (DTJ_TESTENV_* settings, as the tests) or starts one and
stops it at the end. The default run takes about 40 minutes on 2 cores, --quick about 6.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))  # the testenv helpers live beside this folder

from testenv import controlplane  # noqa: E402
from testenv.gpu_pool import GPU_TAINT, POOL_LABEL, SHAPES, build_gpu_node  # noqa: E402

GROUP, VERSION, PLURAL = "diffusion.dev", "v1alpha1", "diffusiontrainingjobs"
LABEL_JOB_NAME, LABEL_ATTEMPT = f"{GROUP}/job-name", f"{GROUP}/attempt"
STAGE = "testenv.diffusion.dev/"

WORKERS_PER_JOB = 4
# One GPU per worker and eight workers per 8-GPU node: a quarter of the nodes that one worker
# per node would need, so kwok's node leases and the scheduler's node list stay small.
GPUS_PER_WORKER = 1
GPUS_PER_NODE = 8
SPARE_NODE_FRACTION = 0.1
APPLY_THREADS = 4
RESUME_SETTLE_S = 5.0
EVENT_WRITES_CALM = 10
# What the operator reads and writes; traffic on other resources is not its doing.
OPERATOR_RESOURCES = frozenset(
    {"diffusiontrainingjobs", "jobs", "pods", "configmaps", "services", "events", "leases"}
)
LOG_DIR = Path(tempfile.gettempdir()) / "dtj-bench-operator"


@dataclass(frozen=True)
class Design:
    name: str
    root: Path  # the checkout whose code and CRD this design runs
    shadow_install: bool  # put root's packages ahead of the editable install


@dataclass
class RunResult:
    design: str
    jobs: int
    namespace: str
    apply_to_job_s: list[float] = field(default_factory=list)
    apply_to_running_s: list[float] = field(default_factory=list)
    failure_to_next_attempt_s: list[float] = field(default_factory=list)
    failures_injected: int = 0
    rss_peak_mb: float | None = None
    cpu_s: float | None = None
    api: dict[str, Any] = field(default_factory=dict)
    durations_s: dict[str, float] = field(default_factory=dict)
    operator_module: str = ""
    operator_log: str = ""
    errors: list[str] = field(default_factory=list)


# --- watches: wall-clock receipt times of what the operator and the cluster do ---------------


class Observations:
    """What the watches saw, with the wall-clock time of first receipt."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.job_seen: dict[tuple[str, int], float] = {}
        self.pod_owner: dict[str, tuple[str, int]] = {}
        self.running_pods: dict[tuple[str, int], set[str]] = {}
        self.all_running: dict[tuple[str, int], float] = {}
        self.pod_failed: dict[str, float] = {}
        self.dtj_phase: dict[str, str] = {}
        self.last_event = time.time()

    def see_job(self, job: dict[str, Any], now: float) -> None:
        key = owner_of(job)
        with self.lock:
            self.last_event = now
            if key:
                self.job_seen.setdefault(key, now)

    def see_pod(self, pod: dict[str, Any], now: float) -> None:
        key, name = owner_of(pod), pod["metadata"]["name"]
        phase = (pod.get("status") or {}).get("phase")
        with self.lock:
            self.last_event = now
            if not key:
                return
            self.pod_owner[name] = key
            if phase == "Running":
                running = self.running_pods.setdefault(key, set())
                running.add(name)
                if len(running) >= WORKERS_PER_JOB:
                    self.all_running.setdefault(key, now)
            elif phase == "Failed":
                self.pod_failed.setdefault(name, now)

    def see_dtj(self, dtj: dict[str, Any], now: float) -> None:
        with self.lock:
            self.last_event = now
            self.dtj_phase[dtj["metadata"]["name"]] = (dtj.get("status") or {}).get("phase", "")

    def count(self, table: dict[tuple[str, int], float], attempt: int) -> int:
        with self.lock:
            return sum(1 for _, a in table if a == attempt)

    def dtjs_in_phase(self, phase: str) -> int:
        with self.lock:
            return sum(1 for p in self.dtj_phase.values() if p == phase)

    def pods_of(self, job: str, attempt: int) -> list[str]:
        with self.lock:
            return sorted(name for name, key in self.pod_owner.items() if key == (job, attempt))


def owner_of(obj: dict[str, Any]) -> tuple[str, int] | None:
    labels = obj["metadata"].get("labels") or {}
    if LABEL_JOB_NAME not in labels or LABEL_ATTEMPT not in labels:
        return None
    return labels[LABEL_JOB_NAME], int(labels[LABEL_ATTEMPT])


class ResourceWatch(threading.Thread):
    """List, then watch from the list's resourceVersion; parses raw JSON lines (the typed
    client's deserialisation would cost more CPU than the operator on 2 cores)."""

    def __init__(self, list_call: Callable[..., Any], on_object: Callable[[dict, float], None]):
        super().__init__(daemon=True)
        self.list_call, self.on_object = list_call, on_object
        self.stopped = threading.Event()
        self.response: Any = None

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.watch_from(self.list_once())
            except Exception:  # API server busy or watch expired: list again
                self.stopped.wait(1)

    def list_once(self) -> str:
        listing = json.loads(self.list_call(_preload_content=False).data)
        now = time.time()
        for item in listing["items"]:
            self.on_object(item, now)
        return str(listing["metadata"]["resourceVersion"])

    def watch_from(self, version: str) -> None:
        while not self.stopped.is_set():
            self.response = self.list_call(
                watch=True, resource_version=version, timeout_seconds=60, _preload_content=False
            )
            for line in iterate_lines(self.response):
                event = json.loads(line)
                if event["type"] == "ERROR":
                    return  # 410 Gone and the like: relist
                version = event["object"]["metadata"]["resourceVersion"]
                self.on_object(event["object"], time.time())

    def stop(self) -> None:
        self.stopped.set()
        if self.response is not None:
            # shutdown(), not close(): close() waits for the reading thread's buffer lock,
            # i.e. for the next event or the watch's server-side timeout.
            with contextlib.suppress(Exception):
                self.response.shutdown()


def iterate_lines(response: Any) -> Iterator[bytes]:
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line.strip())


def start_watches(api: client.ApiClient, namespace: str, seen: Observations) -> list[ResourceWatch]:
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    custom = client.CustomObjectsApi(api)
    selector = LABEL_JOB_NAME
    watches = [
        ResourceWatch(
            lambda **kw: batch.list_namespaced_job(namespace, label_selector=selector, **kw),
            seen.see_job,
        ),
        ResourceWatch(
            lambda **kw: core.list_namespaced_pod(namespace, label_selector=selector, **kw),
            seen.see_pod,
        ),
        ResourceWatch(
            lambda **kw: custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, **kw
            ),
            seen.see_dtj,
        ),
    ]
    for watch in watches:
        watch.start()
    return watches


# --- the operator process: start, sample, pause, stop ---------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def design_env(design: Design, **settings: str) -> dict[str, str]:
    """The environment of a design's interpreter: the baseline's packages shadow the editable
    install (PYTHONPATH comes before site-packages)."""
    env = {**os.environ, **settings}
    if design.shadow_install:
        shadow = f"{design.root / 'operator'}:{design.root / 'trainer'}"
        env["PYTHONPATH"] = ":".join(p for p in (shadow, os.environ.get("PYTHONPATH")) if p)
    return env


def start_operator(
    design: Design, namespace: str, kubeconfig: Path, log: Path
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = design_env(
        design,
        KUBECONFIG=str(kubeconfig),
        DTJ_OPERATOR_NAMESPACES=namespace,
        DTJ_OPERATOR_METRICS_PORT="0",
        DTJ_OPERATOR_LIVENESS_PORT=str(port),
    )
    command = [sys.executable, "-m", "diffusion_operator.cli", "operator"]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            cwd=design.root,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, port


def operator_module_path(design: Design) -> str:
    """Which diffusion_operator the design's interpreter imports (proves the shadowing)."""
    probe = "import diffusion_operator; print(diffusion_operator.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env=design_env(design),
        cwd=design.root,
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or out.stderr.strip()[-300:]


def wait_operator_live(process: subprocess.Popen[bytes], port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"operator exited with {process.returncode} at start-up")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"operator liveness endpoint not up after {timeout_s:.0f}s")


def stop_operator(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def process_tree(pid: int) -> list[int]:
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                pending += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return tree


def signal_tree(pid: int, signum: int) -> None:
    for member in process_tree(pid):
        try:
            os.kill(member, signum)
        except ProcessLookupError:
            continue


def read_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def read_cpu_ticks(pid: int, with_reaped_children: bool) -> int:
    # Fields after the parenthesised command: utime, stime, cutime, cstime are 14..17 (1-based).
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks + (int(fields[13]) + int(fields[14]) if with_reaped_children else 0)


class ResourceSampler(threading.Thread):
    """Peak RSS and CPU time of the operator's process tree, sampled once a second."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.stopped = pid, threading.Event()
        self.peak_rss_kb, self.cpu_ticks = 0, 0

    def run(self) -> None:
        while not self.stopped.is_set():
            self.sample()
            self.stopped.wait(1.0)

    def sample(self) -> None:
        rss, ticks = 0, 0
        for member in process_tree(self.pid):
            try:
                rss += read_rss_kb(member)
                ticks += read_cpu_ticks(member, with_reaped_children=member == self.pid)
            except (OSError, IndexError, ValueError):
                continue  # exited between listing and reading
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.cpu_ticks = max(self.cpu_ticks, ticks)

    def finish(self) -> tuple[float, float]:
        """Stop sampling; returns (peak RSS MB, CPU seconds)."""
        self.sample()
        self.stopped.set()
        return self.peak_rss_kb / 1024, self.cpu_ticks / os.sysconf("SC_CLK_TCK")


# --- the cluster: control plane, CRD, node pool, namespace, jobs ------------------------------


def connect_control_plane(kubeconfig: str | None) -> controlplane.ControlPlane:
    """Reuse a running control plane (as the tests do), else start one that we stop later."""
    path = kubeconfig or os.environ.get("DTJ_TESTENV_KUBECONFIG")
    candidate = Path(path) if path else controlplane.STATE_DIR / "kubeconfig"
    if candidate.is_file():
        plane = controlplane.attach_control_plane(candidate)
        if plane.kubectl("get", "--raw", "/readyz", check=False).strip() == "ok":
            return plane
        if path:
            raise RuntimeError(f"the control plane of {path} is not ready")
    log("starting the local control plane")
    return controlplane.start_control_plane()


def apply_crd(plane: controlplane.ControlPlane, design: Design) -> None:
    crd = design.root / "manifests" / "crd.yaml"
    plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    plane.wait_established(f"crd/{PLURAL}.{GROUP}")


def nodes_for(num_jobs: int) -> int:
    needed = math.ceil(num_jobs * WORKERS_PER_JOB * GPUS_PER_WORKER / GPUS_PER_NODE)
    return needed + math.ceil(needed * SPARE_NODE_FRACTION) + 1


def create_pool(core: client.CoreV1Api, pool: str, num_nodes: int, timeout_s: float) -> None:
    shape = SHAPES["a100"]
    for index in range(num_nodes):
        core.create_node(build_gpu_node(f"{pool}-{index}", pool, shape, GPUS_PER_NODE))
    wait_for(lambda: count_ready_nodes(core, pool) >= num_nodes, timeout_s)


def count_ready_nodes(core: client.CoreV1Api, pool: str) -> int:
    nodes = core.list_node(label_selector=f"{POOL_LABEL}={pool}").items
    return sum(
        1
        for node in nodes
        if any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
    )


def delete_pool(core: client.CoreV1Api, pool: str) -> None:
    core.delete_collection_node(label_selector=f"{POOL_LABEL}={pool}")


def create_namespace(core: client.CoreV1Api, name: str) -> None:
    core.create_namespace({"metadata": {"name": name, "labels": {"testenv": "true"}}})
    # Pods are refused until the namespace's default ServiceAccount exists.
    wait_for(lambda: service_account_exists(core, name), 60)


def service_account_exists(core: client.CoreV1Api, namespace: str) -> bool:
    try:
        core.read_namespaced_service_account("default", namespace)
    except ApiException:
        return False
    return True


def delete_namespace(core: client.CoreV1Api, name: str, timeout_s: float) -> bool:
    try:
        core.delete_namespace(name, propagation_policy="Background")
    except ApiException as error:
        if error.status != 404:
            raise
    return wait_for(lambda: not namespace_exists(core, name), timeout_s)


def namespace_exists(core: client.CoreV1Api, name: str) -> bool:
    try:
        core.read_namespace(name)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def job_spec(pool: str) -> dict[str, Any]:
    gpus = WORKERS_PER_JOB * GPUS_PER_WORKER
    return {
        "image": "ghcr.io/diffusion-operator/trainer:bench",
        "preset": "tiny-cpu",
        "training": {"globalBatchSize": 16 * gpus, "microBatchSize": 16},
        "resources": {
            "nodes": WORKERS_PER_JOB,
            "gpusPerNode": GPUS_PER_WORKER,
            "nodeSelector": {POOL_LABEL: pool},
            "tolerations": [
                {"key": GPU_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}
            ],
        },
        # No backoff: failure -> next attempt then times the operator, not a configured delay.
        "failurePolicy": {"maxRestarts": 3, "backoffSeconds": 0},
        # kwok reports this pod IP: the operator's progress poll of rank 0 is refused at once
        # (nothing listens on 127.0.0.1:9400) instead of timing out on an unroutable address.
        "podAnnotations": {STAGE + "pod-ip": "127.0.0.1"},
    }


def apply_jobs(
    api: client.ApiClient, namespace: str, names: list[str], pool: str
) -> dict[str, float]:
    """Create every job as fast as the API server takes them; returns name -> time the create
    call returned."""
    custom = client.CustomObjectsApi(api)
    spec = job_spec(pool)

    def create(name: str) -> tuple[str, float]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "DiffusionTrainingJob",
            "metadata": {"name": name},
            "spec": spec,
        }
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        return name, time.time()

    with ThreadPoolExecutor(APPLY_THREADS) as pool_:
        return dict(pool_.map(create, names))


# --- the measurements --------------------------------------------------------------------------


def wait_for(check: Callable[[], bool], timeout_s: float, interval_s: float = 1.0) -> bool:
    """Poll until check() holds; False (not an exception) on timeout, so a run reports it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except (ApiException, OSError):
            pass  # a busy API server: try again
        time.sleep(interval_s)
    return False


def wait_quiet(seen: Observations, quiet_s: float, cap_s: float) -> None:
    """Until no watched object changed for quiet_s (capped): the backlog of events is drained."""
    wait_for(lambda: time.time() - seen.last_event >= quiet_s, cap_s, interval_s=0.5)


def wait_events_drained(api: client.ApiClient, cap_s: float) -> None:
    """Until the API server takes at most EVENT_WRITES_CALM writes to Events per 5 s, twice in
    a row: the scheduler's and controllers' Events of the rollout trail the last Running pod
    by a minute or more, and would count as background that then drifts."""
    deadline, calm = time.monotonic() + cap_s, 0
    last = event_writes(api)
    while calm < 2 and time.monotonic() < deadline:
        time.sleep(5)
        now = event_writes(api)
        calm = calm + 1 if now - last <= EVENT_WRITES_CALM else 0
        last = now


def event_writes(api: client.ApiClient) -> float:
    counts = scrape_request_counts(api)
    return sum(v for (kind, verb), v in counts.items() if kind == "events" and verb != "GET")


def latencies(
    seen: Observations, started: dict[str, float], ended: dict[tuple[str, int], float]
) -> list[float]:
    """Per job, end - start; inf for a job that never got there (so percentiles say timeout)."""
    with seen.lock:
        return [ended.get((name, 1), math.inf) - at for name, at in started.items()]


def scrape_request_counts(api: client.ApiClient) -> dict[tuple[str, str], float]:
    """apiserver_request_total summed by (resource, verb), from the API server's /metrics."""
    response = api.rest_client.pool_manager.request(
        "GET", f"{api.configuration.host}/metrics", timeout=60
    )
    counts: dict[tuple[str, str], float] = {}
    for line in response.data.decode().splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_text, value = line[len("apiserver_request_total{") :].rsplit("} ", 1)
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels_text))
        key = (labels.get("resource", ""), labels.get("verb", ""))
        counts[key] = counts.get(key, 0.0) + float(value)
    return counts


def count_window(api: client.ApiClient, window_s: float) -> tuple[dict[str, float], float]:
    """Non-WATCH requests per 'resource verb' over a window; returns (counts, seconds)."""
    before, started = scrape_request_counts(api), time.monotonic()
    time.sleep(window_s)
    after, elapsed = scrape_request_counts(api), time.monotonic() - started
    delta = {
        f"{resource} {verb}": after[(resource, verb)] - before.get((resource, verb), 0.0)
        for resource, verb in after
        if verb != "WATCH" and after[(resource, verb)] != before.get((resource, verb), 0.0)
    }
    return delta, elapsed


def operator_requests(counts: dict[str, float]) -> float:
    return sum(v for key, v in counts.items() if key.split(" ")[0] in OPERATOR_RESOURCES)


def count_paused_window(
    api: client.ApiClient, operator_pid: int, window_s: float
) -> tuple[dict[str, float], float]:
    signal_tree(operator_pid, signal.SIGSTOP)
    try:
        return count_window(api, window_s)
    finally:
        signal_tree(operator_pid, signal.SIGCONT)


def measure_api_rate(
    api: client.ApiClient, operator_pid: int, num_jobs: int, window_s: float
) -> dict[str, Any]:
    """Requests/job/min with the operator running, less everyone else's: the operator paused
    for half a window before and half after, so a background that still drifts (the
    controllers' event backlog at N=1000) cancels to first order."""
    before, before_s = count_paused_window(api, operator_pid, window_s / 2)
    time.sleep(RESUME_SETTLE_S)  # the resync it missed is not steady-state traffic
    running, running_s = count_window(api, window_s)
    after, after_s = count_paused_window(api, operator_pid, window_s / 2)
    paused = {k: before.get(k, 0.0) + after.get(k, 0.0) for k in {*before, *after}}
    raw = operator_requests(running) / num_jobs / (running_s / 60)
    background = operator_requests(paused) / num_jobs / ((before_s + after_s) / 60)
    return {
        "raw_per_job_min": raw,
        "net_per_job_min": raw - background,
        "window_s": {"running": running_s, "paused": before_s + after_s},
        "running_counts": running,
        "paused_counts": paused,
    }


def inject_failures(
    api: client.ApiClient, namespace: str, seen: Observations, victims: list[str]
) -> dict[str, float]:
    """One worker (rank 1's pod) of each victim exits 1, the way the chaos tests fail kwok pods
    (testenv stage annotations); returns job -> time the annotation was written."""
    core = client.CoreV1Api(api)
    message = "bench: injected worker failure"
    failure = {STAGE + "outcome": "Failed", STAGE + "exit-code": "1", STAGE + "message": message}

    def fail_one(job: str) -> tuple[str, float] | None:
        pods = seen.pods_of(job, 1)
        if not pods:
            return None
        pod = pods[min(1, len(pods) - 1)]
        core.patch_namespaced_pod(pod, namespace, {"metadata": {"annotations": failure}})
        return job, time.time()

    with ThreadPoolExecutor(APPLY_THREADS) as workers:
        return dict(r for r in workers.map(fail_one, victims) if r)


def failure_latencies(seen: Observations, injected: dict[str, float]) -> list[float]:
    """From the failed pod's Failed phase (as watched; the annotation time if not seen) to
    attempt 2's Job."""
    results = []
    with seen.lock:
        for job, annotated_at in injected.items():
            failed = [
                at for pod, at in seen.pod_failed.items() if seen.pod_owner.get(pod) == (job, 1)
            ]
            started = min(failed, default=annotated_at)
            results.append(seen.job_seen.get((job, 2), math.inf) - started)
    return results


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; inf when it falls on a job that timed out."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# --- one run: a design against N jobs ---------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    plane: controlplane.ControlPlane
    api: client.ApiClient
    window_s: float
    failures: int


def run_design(bench: Bench, design: Design, num_jobs: int, pool: str) -> RunResult:
    core = client.CoreV1Api(bench.api)
    namespace = f"bench-{design.name}-{num_jobs}-{uuid.uuid4().hex[:5]}"
    result = RunResult(design.name, num_jobs, namespace)
    result.operator_module = operator_module_path(design)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{namespace}.log"
    result.operator_log = str(log_path)
    apply_crd(bench.plane, design)
    create_namespace(core, namespace)
    seen = Observations()
    watches = start_watches(bench.api, namespace, seen)
    process, port = start_operator(design, namespace, bench.plane.kubeconfig, log_path)
    sampler = ResourceSampler(process.pid)
    sampler.start()
    try:
        started = time.monotonic()
        wait_operator_live(process, port, timeout_s=90)
        result.durations_s["operator_start"] = time.monotonic() - started
        measure_run(bench, result, seen, process.pid, pool)
    except Exception as error:  # an operator that does not start or dies: report, go on
        result.errors.append(f"{type(error).__name__}: {error}")
    finally:
        result.rss_peak_mb, result.cpu_s = sampler.finish()
        if process.poll() is not None:
            result.errors.append(f"operator exited with {process.returncode}: see {log_path}")
        started = time.monotonic()
        stop_operator(process)
        for watch in watches:
            watch.stop()
        try:
            if not delete_namespace(core, namespace, timeout_s=300 + 0.3 * num_jobs):
                result.errors.append(f"namespace {namespace} still deleting: timeout")
        except Exception as error:  # the API server went away: say so, keep what was measured
            result.errors.append(f"deleting {namespace}: {type(error).__name__}: {error}")
        result.durations_s["teardown"] = time.monotonic() - started
    return result


def run_design_reporting_errors(
    bench: Bench, design: Design, num_jobs: int, pool: str
) -> RunResult:
    """A run that could not even start (no CRD, no namespace) is a row with its error."""
    try:
        return run_design(bench, design, num_jobs, pool)
    except Exception as error:
        result = RunResult(design.name, num_jobs, namespace="-")
        result.errors.append(f"{type(error).__name__}: {error}")
        return result


def measure_run(
    bench: Bench, result: RunResult, seen: Observations, operator_pid: int, pool: str
) -> None:
    num_jobs = result.jobs
    names = [f"dtj-{index:04d}" for index in range(num_jobs)]
    started = time.monotonic()
    created = apply_jobs(bench.api, result.namespace, names, pool)
    result.durations_s["apply"] = time.monotonic() - started
    rollout_timeout_s = 120 + 0.6 * num_jobs  # the Job controller's 20 QPS bounds pod creation
    wait_for(lambda: seen.count(seen.all_running, 1) >= num_jobs, rollout_timeout_s)
    wait_for(lambda: seen.dtjs_in_phase("Running") >= num_jobs, 60)
    result.durations_s["rollout"] = time.monotonic() - started
    result.apply_to_job_s = latencies(seen, created, seen.job_seen)
    result.apply_to_running_s = latencies(seen, created, seen.all_running)
    started = time.monotonic()
    wait_quiet(seen, quiet_s=5, cap_s=60)
    wait_events_drained(bench.api, cap_s=120)
    result.durations_s["settle"] = time.monotonic() - started
    result.api = measure_api_rate(bench.api, operator_pid, num_jobs, bench.window_s)
    result.api["steady"] = seen.dtjs_in_phase("Running") >= num_jobs
    started = time.monotonic()
    # The resumed operator first works off the resyncs it missed, which need not touch anything
    # watched: count quiet from the resume, and longer than before.
    seen.last_event = time.time()
    wait_quiet(seen, quiet_s=10, cap_s=60)
    result.durations_s["settle_after_pause"] = time.monotonic() - started
    victims = names[: min(num_jobs, bench.failures)]
    started = time.monotonic()
    injected = inject_failures(bench.api, result.namespace, seen, victims)
    result.failures_injected = len(injected)
    wait_for(lambda: all((job, 2) in seen.job_seen for job in injected), 120 + 2 * len(injected))
    result.failure_to_next_attempt_s = failure_latencies(seen, injected)
    result.durations_s["failures"] = time.monotonic() - started


# --- designs, output, main ---------------------------------------------------------------------


def add_worktree(ref: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="dtj-bench-baseline-"))
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref],
        check=True,
        capture_output=True,
    )
    return path


def remove_worktree(path: Path) -> None:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
        check=False,
        capture_output=True,
    )


def format_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return "timeout" if math.isinf(value) else f"{value:.2f}"


def format_number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(results: list[RunResult]) -> str:
    rows = [
        "| design | N | apply→Job p50 s | p99 s | apply→Running p50 s | p99 s "
        "| fail→next p99 s | RSS MB | CPU s | API req/job/min raw | net |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        cells = [
            r.design,
            str(r.jobs),
            format_seconds(percentile(r.apply_to_job_s, 50)),
            format_seconds(percentile(r.apply_to_job_s, 99)),
            format_seconds(percentile(r.apply_to_running_s, 50)),
            format_seconds(percentile(r.apply_to_running_s, 99)),
            format_seconds(percentile(r.failure_to_next_attempt_s, 99)),
            format_number(r.rss_peak_mb, 0),
            format_number(r.cpu_s),
            format_number(r.api.get("raw_per_job_min"), 2),
            format_number(r.api.get("net_per_job_min"), 2),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def machine_line() -> str:
    total_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return f"machine: nproc {os.cpu_count()}, memory {total_kb / 1024**2:.1f} GiB, date {now}"


def setup_line(failures: int, window_s: float) -> str:
    return (
        f"setup: {WORKERS_PER_JOB} workers/job x {GPUS_PER_WORKER} GPU, {GPUS_PER_NODE} workers "
        f"per kwok A100 node (+{SPARE_NODE_FRACTION:.0%} spare nodes), backoffSeconds 0, "
        f"failures on min(N,{failures}) jobs, API window {window_s:.0f} s running between two "
        f"{window_s / 2:.0f} s SIGSTOPped; resources: {', '.join(sorted(OPERATOR_RESOURCES))}"
    )


def summarise(result: RunResult) -> dict[str, Any]:
    summary = asdict(result)
    for key in ("apply_to_job_s", "apply_to_running_s", "failure_to_next_attempt_s"):
        values = summary.pop(key)
        summary[key] = {
            "p50": percentile(values, 50),
            "p99": percentile(values, 99),
            "count": len(values),
            "timeouts": sum(1 for v in values if math.isinf(v)),
        }
        for stat in ("p50", "p99"):
            if summary[key][stat] is not None and math.isinf(summary[key][stat]):
                summary[key][stat] = "timeout"
    return summary


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,300,1000", help="numbers of jobs, comma-separated")
    parser.add_argument("--designs", default="current,baseline", help="current and/or baseline")
    parser.add_argument("--baseline-ref", default="877287c", help="git ref of the baseline")
    parser.add_argument("--quick", action="store_true", help="N=20 only, for a rehearsal")
    parser.add_argument("--out", type=Path, default=Path("/tmp/dtj-bench-operator.json"))
    parser.add_argument("--window-s", type=float, default=60, help="each API counting window")
    parser.add_argument("--failures", type=int, default=50, help="K: jobs whose worker fails")
    parser.add_argument("--kubeconfig", help="a running control plane (default: reuse or start)")
    args = parser.parse_args(argv)
    args.sizes = [20] if args.quick else [int(s) for s in args.sizes.split(",") if s]
    args.designs = [d for d in args.designs.split(",") if d]
    unknown = set(args.designs) - {"current", "baseline"}
    if unknown:
        parser.error(f"unknown designs: {sorted(unknown)}")
    return args


def run_all(args: argparse.Namespace, designs: list[Design]) -> list[RunResult]:
    plane = connect_control_plane(args.kubeconfig)
    try:
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        bench = Bench(plane, api, args.window_s, args.failures)
        core = client.CoreV1Api(api)
        results = []
        for num_jobs in args.sizes:
            pool = f"bench-a100-{num_jobs}-{uuid.uuid4().hex[:4]}"
            num_nodes = nodes_for(num_jobs)
            log(f"N={num_jobs}: creating {num_nodes} kwok A100 nodes ({pool})")
            create_pool(core, pool, num_nodes, timeout_s=120 + 0.2 * num_nodes)
            try:
                for design in designs:
                    log(f"N={num_jobs}: design {design.name}")
                    results.append(run_design_reporting_errors(bench, design, num_jobs, pool))
                    log(f"N={num_jobs}: {design.name} done {results[-1].durations_s}")
            finally:
                with contextlib.suppress(Exception):  # a control plane gone takes its nodes
                    delete_pool(core, pool)
        return results
    finally:
        if plane.owned:
            controlplane.stop_control_plane()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    worktree = add_worktree(args.baseline_ref) if "baseline" in args.designs else None
    designs = [
        Design("baseline", worktree, shadow_install=True)
        if name == "baseline" and worktree is not None
        else Design("current", ROOT, shadow_install=False)
        for name in args.designs
    ]
    started = time.monotonic()
    try:
        results = run_all(args, designs)
    finally:
        if worktree is not None:
            remove_worktree(worktree)
    header = [machine_line(), setup_line(args.failures, args.window_s)]
    print("\n".join([*header, "", format_table(results)]))
    for result in results:
        for error in result.errors:
            print(f"{result.design} N={result.jobs}: {error}")
    report = {
        "machine": header[0],
        "setup": header[1],
        "baseline_ref": args.baseline_ref,
        "wall_s": time.monotonic() - started,
        "runs": [summarise(r) for r in results],
    }
    args.out.write_text(json.dumps(report, indent=1))
    print(f"\nJSON: {args.out}; operator logs: {LOG_DIR}")
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
