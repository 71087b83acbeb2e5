"""Find and print the logs the agent keeps per pod (`dtj logs JOB [--rank N] [--attempt N]`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE_DIR = Path("/tmp/dtj-demo/localnode")
JOB_LABEL = "diffusion.dev/job-name"
ATTEMPT_LABEL = "diffusion.dev/attempt"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def state_dir_from_env() -> Path:
    return Path(os.environ.get("DTJ_LOCALNODE_DIR") or DEFAULT_STATE_DIR)


@dataclass(frozen=True)
class PodLog:
    namespace: str
    pod: str
    attempt: int
    rank: int
    path: Path


def list_pod_logs(state_dir: Path, job: str, namespace: str) -> list[PodLog]:
    found = []
    for meta_file in sorted((state_dir / "pods").glob("*/pod.json")):
        meta = json.loads(meta_file.read_text())
        labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
        if meta.get("namespace") != namespace or labels.get(JOB_LABEL) != job:
            continue
        for log_file in sorted(meta_file.parent.glob("*.log")):
            found.append(
                PodLog(
                    namespace,
                    meta["name"],
                    int(labels.get(ATTEMPT_LABEL, "1")),
                    int(annotations.get(INDEX_ANNOTATION, "0")),
                    log_file,
                )
            )
    return found


def select_log(logs: list[PodLog], rank: int, attempt: int | None) -> PodLog | None:
    """The given rank of the given attempt (default: the latest attempt that has logs)."""
    if attempt is None and logs:
        attempt = max(entry.attempt for entry in logs)
    matches = [e for e in logs if e.attempt == attempt and e.rank == rank]
    return matches[-1] if matches else None
