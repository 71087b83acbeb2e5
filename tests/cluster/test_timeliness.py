"""Deadlines and TTLs fire on time with hundreds of jobs present: each job comes back when its
plan asks, not when a sweep over every job comes round."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from testenv.chaos_checks import finish
from testenv.waiting import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
NUM_BYSTANDERS = 300
SLACK_S = 2 + 1  # the promise, plus the second-granularity of status timestamps


def parse(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@pytest.fixture
def bystanders(dtjs, job_spec):
    """Suspended jobs: each has its ConfigMap, Service and suspended Job, and no pods."""
    spec = job_spec(None, nodes=1, runPolicy={"suspend": True})
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: dtjs.create(f"idle-{n}", spec), range(NUM_BYSTANDERS)))

    def settled() -> bool:
        items = dtjs.custom.list_namespaced_custom_object(
            "diffusion.dev", "v1alpha1", dtjs.namespace, "diffusiontrainingjobs"
        )["items"]
        return sum((i.get("status") or {}).get("phase") == "Suspended" for i in items) == len(items)

    wait_until(settled, 300, f"{NUM_BYSTANDERS} suspended jobs reconciled")


def test_deadline_and_ttl_fire_on_time_among_300_jobs(
    dtjs, make_gpu_pool, operator, job_spec, bystanders
):
    pool = make_gpu_pool(num_nodes=2)
    dtjs.create("deadline", job_spec(pool, nodes=1, runPolicy={"activeDeadlineSeconds": 6}))
    dtjs.create("brief", job_spec(pool, nodes=1, runPolicy={"ttlSecondsAfterFinished": 3}))
    finish(dtjs, dtjs.running_pods("brief", attempt=1, count=1), outcome="Succeeded")

    failed = dtjs.wait_phase("deadline", "Failed", timeout_s=60)
    assert dtjs.condition("deadline", "Failed")["reason"] == "DeadlineExceeded"
    late_s = (parse(failed["completionTime"]) - parse(failed["startTime"])).total_seconds() - 6
    assert late_s <= SLACK_S, f"the deadline fired {late_s:.0f}s late"

    finished = parse(dtjs.wait_phase("brief", "Succeeded")["completionTime"])

    def deleted_at() -> datetime | None:
        names = [
            j["metadata"]["name"]
            for j in dtjs.custom.list_namespaced_custom_object(
                "diffusion.dev", "v1alpha1", dtjs.namespace, "diffusiontrainingjobs"
            )["items"]
        ]
        return None if "brief" in names else datetime.now(UTC)

    gone = wait_until(deleted_at, 60, "the TTL to delete the finished job", interval_s=0.1)
    late_s = (gone - (finished + timedelta(seconds=3))).total_seconds()
    assert late_s <= SLACK_S, f"the TTL fired {late_s:.1f}s late"
