"""Paths and tool invocations shared by the packaging tests and their fixtures."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "diffusion-operator"
# Offline rendering needs a version that the chart accepts (kubeVersion) and that
# kubernetes-validate ships schemas for.
KUBE_VERSION = "1.33.0"
CRD_NAME = "diffusiontrainingjobs.diffusion.dev"
# Keeps the chart's (never running) operator pod Pending instead of bound to a fake node.
UNSCHEDULABLE = {"nodeSelector.testenv\\.diffusion\\.dev/pool": "no-such-pool"}


def run_tool(*args: Any, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout_s, check=False
    )


def set_flags(values: dict[str, str]) -> list[str]:
    return [f"--set={key}={value}" for key, value in values.items()]


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    install_output: str

    @property
    def fullname(self) -> str:
        return f"{self.name}-diffusion-operator"

    @property
    def service_account(self) -> str:
        return self.fullname

    @property
    def worker_service_account(self) -> str:
        return f"{self.fullname}-worker"

    @property
    def identity(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"
