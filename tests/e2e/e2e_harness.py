"""Helpers of the e2e tier: the local node agent's handle, process lookup, the job spec."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LocalNode:
    name: str
    state_dir: Path
    netns_prefix: str
    process: subprocess.Popen

    def processes(self) -> list[int]:
        """PIDs of every pod process this agent started (their env names the node)."""
        return pids_with_env(f"LOCALNODE_NODE={self.name}")

    def netns(self) -> list[str]:
        listing = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=False
        )
        names = [line.split()[0] for line in listing.stdout.splitlines() if line.strip()]
        return [name for name in names if name.startswith(f"{self.netns_prefix}-")]

    def log_tail(self, num_lines: int = 60) -> str:
        log = self.state_dir / "agent.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-num_lines:])


def pids_with_env(entry: str) -> list[int]:
    needle = entry.encode() + b"\0"
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes():
                pids.append(int(environ.parent.name))
        except OSError:
            continue  # exited meanwhile, or a kernel thread
    return pids


def local_job_spec(namespace: str, max_steps: int, checkpoint_interval: int = 10) -> dict:
    """The tiny CPU job on the local node: 2 nodes x 1 process, data and checkpoints on /data."""
    return {
        "image": "ghcr.io/diffusion-operator/trainer:e2e",
        "preset": "tiny-cpu",
        "data": {"train": {"local": "/data/synthetic/latents"}},
        "checkpoint": {
            "uri": f"/data/checkpoints/{namespace}",
            "intervalSteps": checkpoint_interval,
        },
        "training": {"maxSteps": max_steps},
        "pvcMounts": [{"claimName": "data", "mountPath": "/data"}],
        "resources": {
            "nodes": 2,
            "gpusPerNode": 0,
            "cpu": "500m",
            "memory": "2Gi",
            "shmSize": "256Mi",
            "nodeSelector": {"diffusion.dev/local-node": "true"},
            "tolerations": [
                {"key": "diffusion.dev/local-node", "operator": "Exists", "effect": "NoSchedule"}
            ],
        },
        "failurePolicy": {"maxRestarts": 3, "backoffSeconds": 1},
        "runPolicy": {"terminationGracePeriodSeconds": 60},
    }
