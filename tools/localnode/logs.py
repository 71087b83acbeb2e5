"""Find and print the logs the agent keeps per pod:
`PYTHONPATH=tools python -m localnode.logs JOB [--rank N] [--attempt N] [-n NS] [--state-dir D]`.
(A real node serves its pods' logs through the API server: `kubectl dtj logs`.)"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE_DIR = Path("/tmp/dtj-localnode")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localnode.logs", description=__doc__)
    parser.add_argument("job")
    parser.add_argument("--rank", type=int, default=0, help="node rank (completion index)")
    parser.add_argument("--attempt", type=int, default=None, help="default: the latest")
    parser.add_argument("-n", "--namespace", default="default")
    parser.add_argument("--state-dir", type=Path, default=None, help="default: $DTJ_LOCALNODE_DIR")
    args = parser.parse_args(argv)
    state_dir = args.state_dir or state_dir_from_env()
    entry = select_log(list_pod_logs(state_dir, args.job, args.namespace), args.rank, args.attempt)
    if entry is None:
        where = f"{args.namespace}/{args.job} rank {args.rank}"
        print(f"no local logs for {where} under {state_dir}", file=sys.stderr)
        return 1
    sys.stdout.write(entry.path.read_text(errors="replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
