"""Cluster-tier fixtures: the CRD, the operator (kopf, in a thread) and job helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testenv.ports import free_port
from testenv.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "diffusion.dev", "v1alpha1", "diffusiontrainingjobs"


# One port per pytest process: the operator's metrics server starts once per process, and the
# e2e and chaos tiers load this module again.
OPERATOR_METRICS_PORT = int(
    os.environ.setdefault("DTJ_TEST_OPERATOR_METRICS_PORT", str(free_port()))
)
OPERATOR_LIVENESS_PORT = int(
    os.environ.setdefault("DTJ_TEST_OPERATOR_LIVENESS_PORT", str(free_port()))
)
OPERATOR_ENV = {
    "DTJ_OPERATOR_LIVENESS_PORT": str(OPERATOR_LIVENESS_PORT),
    "DTJ_OPERATOR_PROGRESS_INTERVAL_S": "1",
    "DTJ_OPERATOR_DEFAULT_CHECKPOINT_ROOT": "/checkpoints",
    "DTJ_OPERATOR_METRICS_PORT": str(OPERATOR_METRICS_PORT),
}


@pytest.fixture(scope="session")
def crd(control_plane) -> None:
    control_plane.kubectl("apply", "--server-side", "-f", str(ROOT / "manifests" / "crd.yaml"))
    control_plane.wait_established(f"crd/{PLURAL}.{GROUP}")


@pytest.fixture
def run_operator(control_plane, crd, namespace, monkeypatch) -> Iterator[Any]:
    """Factory: start the operator for the test's namespace in this process (kopf in a
    thread); stopped after the test. Watching one namespace keeps tests independent."""
    from kopf.testing import KopfRunner

    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    # The client reads $KUBECONFIG once at import; kopf and the operator use its default.
    monkeypatch.setattr(
        "kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(control_plane.kubeconfig)
    )
    for key, value in {**OPERATOR_ENV, "DTJ_OPERATOR_NAMESPACES": namespace}.items():
        monkeypatch.setenv(key, value)
    runners: list[KopfRunner] = []

    def start() -> KopfRunner:
        args = [
            "run",
            f"--namespace={namespace}",
            "--standalone",
            "-m",
            "diffusion_operator.handlers",
        ]
        runner = KopfRunner(args, timeout=60)
        runner.__enter__()
        runners.append(runner)
        return runner

    yield start
    for runner in runners:
        runner.__exit__(None, None, None)


@pytest.fixture
def operator(run_operator):
    return run_operator()


@pytest.fixture
def operator_metrics():
    """Scrape the in-process operator's /metrics over HTTP: {(name, labels): value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict[tuple[str, tuple], float]:
        url = f"http://127.0.0.1:{OPERATOR_METRICS_PORT}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    return scrape


class TrainingJobs:
    """Create, read and wait on DiffusionTrainingJobs of one namespace."""

    def __init__(self, api_client, namespace: str, control_plane) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.namespace = namespace
        self.plane = control_plane

    def create(self, name: str, spec: dict[str, Any]) -> dict:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "DiffusionTrainingJob",
            "metadata": {"name": name},
            "spec": spec,
        }
        return self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body
        )

    def get(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec}
        )

    def patch_status(self, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, PLURAL, name, {"status": status}
        )

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def status(self, name: str) -> dict:
        return self.get(name).get("status") or {}

    def condition(self, name: str, type_: str) -> dict:
        conditions = self.status(name).get("conditions", [])
        return next((c for c in conditions if c["type"] == type_), {})

    def wait_phase(self, name: str, phase: str, timeout_s: float = 60) -> dict:
        return wait_until(
            lambda: self.status(name) if self.status(name).get("phase") == phase else None,
            timeout_s=timeout_s,
            what=f"dtj/{name} phase {phase} (now: {self.status(name).get('phase')})",
        )

    def pods(self, name: str, attempt: int | None = None) -> list:
        selector = f"diffusion.dev/job-name={name}"
        if attempt is not None:
            selector += f",diffusion.dev/attempt={attempt}"
        return self.core.list_namespaced_pod(self.namespace, label_selector=selector).items

    def running_pods(self, name: str, attempt: int, count: int, timeout_s: float = 60) -> list:
        def ready():
            pods = [p for p in self.pods(name, attempt) if p.status.phase == "Running"]
            return pods if len(pods) == count else None

        return wait_until(ready, timeout_s, f"{count} running pods of {name} attempt {attempt}")

    def annotate_pod(self, pod_name: str, annotations: dict[str, str]) -> None:
        self.core.patch_namespaced_pod(
            pod_name, self.namespace, {"metadata": {"annotations": annotations}}
        )

    def jobs(self, name: str) -> list:
        selector = f"diffusion.dev/job-name={name}"
        return self.batch.list_namespaced_job(self.namespace, label_selector=selector).items

    def apply(self, manifest: dict[str, Any], check: bool = False) -> tuple[int, str]:
        import subprocess

        result = subprocess.run(
            [
                str(self.plane.bin_dir / "kubectl"),
                f"--kubeconfig={self.plane.kubeconfig}",
                "-n",
                self.namespace,
                "apply",
                "-f",
                "-",
            ],
            input=yaml.safe_dump(manifest),
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )
        return result.returncode, result.stdout + result.stderr


@pytest.fixture
def dtjs(api_client, namespace, control_plane, crd) -> TrainingJobs:
    return TrainingJobs(api_client, namespace, control_plane)


@pytest.fixture
def job_spec():
    """Factory: job_spec(pool, nodes=2, gpus=8, **spec_overrides) -> a valid spec dict."""
    return gpu_job_spec


def gpu_job_spec(pool, nodes: int = 2, gpus: int = 8, **overrides: Any) -> dict[str, Any]:
    """A valid job for a fake GPU pool; overrides replace top-level spec fields."""
    spec: dict[str, Any] = {
        "image": "ghcr.io/diffusion-operator/trainer:test",
        "preset": "tiny-cpu",
        "training": {"globalBatchSize": 16 * nodes * gpus, "microBatchSize": 16},
        "resources": {
            "nodes": nodes,
            "gpusPerNode": gpus,
            "nodeSelector": pool.node_selector if pool else {},
            "tolerations": pool.tolerations if pool else [],
        },
        "failurePolicy": {"maxRestarts": 0, "backoffSeconds": 1},
    }
    spec.update(overrides)
    return spec
