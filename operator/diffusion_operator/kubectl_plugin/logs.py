"""`kubectl dtj logs`: rank N's log of an attempt, read from the cluster (the pod's container log
through the API server), as `kubectl logs` would."""

from __future__ import annotations

import sys
from typing import Any

from diffusion_operator import constants as c
from diffusion_operator.kubectl_plugin.connection import Connection

COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"


class LogsError(RuntimeError):
    """No pod to read: a clear sentence for the user."""


def pod_rank(pod: Any) -> str:
    return str((pod.metadata.labels or {}).get(COMPLETION_INDEX_LABEL, "?"))


def select_pod(pods: list[Any], rank: int, attempt: int, job: str, *, ended: bool = False) -> Any:
    """The newest pod of the attempt with that completion index (rank of the gang)."""
    if not pods:
        raise LogsError(
            f"no pods of {job} attempt {attempt}: after a restart only the failed workers of"
            f" the last {c.NUM_FAILED_ATTEMPTS_KEPT} failed attempts are kept; read other ranks"
            " and older attempts from your cluster's log store"
        )
    ranked = [pod for pod in pods if pod_rank(pod) == str(rank)]
    if not ranked:
        ranks = ", ".join(sorted({pod_rank(pod) for pod in pods}))
        why = "; an ended attempt keeps its failed workers only" if ended else ""
        raise LogsError(f"{job} attempt {attempt} has no rank {rank} (ranks: {ranks}{why})")
    return max(ranked, key=lambda pod: pod.metadata.creation_timestamp)


def print_logs(
    conn: Connection, job: str, rank: int, attempt: int | None, *, follow: bool, tail: int | None
) -> None:
    status = (
        conn.custom.get_namespaced_custom_object(
            c.GROUP, c.VERSION, conn.namespace, c.PLURAL, job
        ).get("status")
        or {}
    )
    current = int(status.get("attempt") or 1)
    attempt = current if attempt is None else attempt
    selector = f"{c.LABEL_JOB_NAME}={job},{c.LABEL_ATTEMPT}={attempt}"
    pods = conn.core.list_namespaced_pod(conn.namespace, label_selector=selector).items
    pod = select_pod(pods, rank, attempt, job, ended=attempt < current)
    response = conn.core.read_namespaced_pod_log(
        pod.metadata.name, conn.namespace, follow=follow, tail_lines=tail, _preload_content=False
    )
    for chunk in response.stream(amt=4096):
        sys.stdout.write(chunk.decode(errors="replace"))
        sys.stdout.flush()
