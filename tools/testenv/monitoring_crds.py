"""The Prometheus Operator's own CRDs (PodMonitor, ServiceMonitor, PrometheusRule) for tests.

They ship inside the project's Go module, so the Go module proxy serves them like our other
test binaries' sources, and Go's module cache keeps them (checksummed) between runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

MODULE = "github.com/prometheus-operator/prometheus-operator"
CRD_DIR = "example/prometheus-operator-crd"
KINDS = ("podmonitors", "servicemonitors", "prometheusrules")
VERSIONS_FILE = Path(__file__).with_name("versions.env")


def pinned_version(name: str = "PROMETHEUS_OPERATOR_VERSION") -> str:
    for line in VERSIONS_FILE.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == name:
            return value.split("#", 1)[0].strip()
    raise KeyError(f"{name} is not set in {VERSIONS_FILE}")


def download_module(module: str, version: str) -> Path:
    """The module's directory in Go's module cache (downloaded on first use)."""
    result = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        cwd=tempfile.gettempdir(),  # outside any go.mod
        env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"},
        capture_output=True,
        text=True,
        check=False,
    )
    info = json.loads(result.stdout or "{}")
    if result.returncode != 0 or "Dir" not in info:
        raise RuntimeError(f"go mod download {module}@{version} failed: {info or result.stderr}")
    return Path(info["Dir"])


def prometheus_operator_crds() -> list[Path]:
    """CRD manifests of the monitoring.coreos.com/v1 kinds the chart creates."""
    root = download_module(MODULE, pinned_version()) / CRD_DIR
    return [root / f"monitoring.coreos.com_{kind}.yaml" for kind in KINDS]
