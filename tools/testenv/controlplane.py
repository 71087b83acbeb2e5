"""Start, reuse and stop the local control plane from Python (pytest fixtures, `dtj local`)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from testenv.waiting import wait_until

TESTENV_DIR = Path(__file__).resolve().parent
STATE_DIR = Path(os.environ.get("DTJ_TESTENV_DIR", "/tmp/dtj-testenv"))


@dataclass(frozen=True)
class ControlPlane:
    kubeconfig: Path
    bin_dir: Path
    logs_dir: Path
    owned: bool  # started by us, so stopped by us

    def kubectl(self, *args: str, check: bool = True, input_text: str | None = None) -> str:
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=input_text,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def wait_established(self, *targets: str, timeout_s: float = 60) -> None:
        """`kubectl wait --for=condition=Established` on CRDs (`crd/NAME` or `-f FILE` args).
        A CRD applied a moment ago may have no status conditions yet, and kubectl wait then
        fails at once instead of waiting (".status.conditions accessor error"): ask again."""

        def established() -> bool:
            self.kubectl("wait", "--for=condition=Established", "--timeout=10s", *targets)
            return True

        wait_until(established, timeout_s, f"{' '.join(targets)} Established")

    def tail_logs(self, num_lines: int = 40) -> str:
        parts = []
        for log in sorted(self.logs_dir.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-num_lines:]
            parts.append(f"==> {log.name} <==\n" + "\n".join(lines))
        return "\n".join(parts)


def build_binaries() -> Path:
    """Build (or find cached) control plane binaries; returns their directory."""
    out = subprocess.run(
        [str(TESTENV_DIR / "build.sh")], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"building the control plane binaries failed:\n{out.stderr[-4000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def start_control_plane() -> ControlPlane:
    bin_dir = build_binaries()
    out = subprocess.run(
        [str(TESTENV_DIR / "up.sh")], capture_output=True, text=True, check=False, timeout=600
    )
    if out.returncode != 0:
        raise RuntimeError(f"starting the control plane failed:\n{out.stderr[-4000:]}")
    kubeconfig = Path(out.stdout.strip().splitlines()[-1])
    return ControlPlane(kubeconfig, bin_dir, STATE_DIR / "logs", owned=True)


def attach_control_plane(kubeconfig: Path) -> ControlPlane:
    """Use a control plane someone started (`make testenv-up`); never stop it."""
    return ControlPlane(kubeconfig, build_binaries(), STATE_DIR / "logs", owned=False)


def stop_control_plane() -> None:
    subprocess.run([str(TESTENV_DIR / "down.sh")], capture_output=True, check=False, timeout=120)
