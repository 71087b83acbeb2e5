"""Children are matched by the owning job's uid: a re-created job never adopts its
predecessor's Jobs or pods that garbage collection has not removed yet."""

from __future__ import annotations

from diffusion_operator import constants as c
from diffusion_operator.cache import ClusterCache
from diffusion_operator.child_records import job_record, pod_record


def job_owned_by(uid: str | None, name: str = "sd-a1") -> dict:
    refs = [{"apiVersion": "v1", "kind": "K", "name": "sd", "uid": uid}] if uid else []
    labels = {c.LABEL_JOB_NAME: "sd", c.LABEL_ATTEMPT: "1"}
    meta = {"name": name, "namespace": "ns", "labels": labels, "ownerReferences": refs}
    return {"metadata": meta, "spec": {}, "status": {}}


def pod_labelled(uid: str | None, name: str) -> dict:
    labels = {c.LABEL_JOB_NAME: "sd", c.LABEL_ATTEMPT: "1"} | (
        {c.LABEL_JOB_UID: uid} if uid else {}
    )
    return {"metadata": {"name": name, "namespace": "ns", "labels": labels}, "status": {}}


def cache_with(jobs: list[dict], pods: list[dict]) -> ClusterCache:
    cache = ClusterCache()
    for obj in jobs:
        cache.jobs.put(f"ns/{obj['metadata']['name']}", job_record(obj))
    for obj in pods:
        cache.pods.put(f"ns/{obj['metadata']['name']}", pod_record(obj))
    return cache


def test_jobs_of_a_previous_incarnation_are_not_ours():
    cache = cache_with([job_owned_by("new"), job_owned_by("old", "x"), job_owned_by(None, "y")], [])
    assert [j.name for j in cache.observe("ns", "sd", "new").jobs] == ["sd-a1"]


def test_pods_of_a_previous_incarnation_are_not_ours():
    pods = [pod_labelled("new", "a"), pod_labelled("old", "b"), pod_labelled(None, "c")]
    observed = cache_with([], pods).observe("ns", "sd", "new")
    assert sorted(p.name for p in observed.pods) == ["a", "c"]  # c: made before the label
    assert observed.num_foreign_pods == 1


def test_a_read_node_and_a_watched_node_give_the_same_health():
    from datetime import UTC, datetime

    from kubernetes import client

    from diffusion_operator.cache import node_conditions
    from diffusion_operator.node_health import health_of

    since = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    node = client.V1Node(
        status=client.V1NodeStatus(
            conditions=[
                client.V1NodeCondition(type="Ready", status="Unknown", last_transition_time=since)
            ]
        )
    )
    serialized = client.ApiClient().sanitize_for_serialization(node)
    for health in (health_of(serialized), health_of(node_conditions(serialized))):
        assert (health.ready, health.not_ready_since, health.reason) == (
            False,
            since,
            "NodeUnreachable",
        )


def test_a_failing_jobs_condition_time_is_read():
    from datetime import UTC, datetime

    from diffusion_operator.child_records import to_attempt_job

    obj = job_owned_by("new")
    obj["status"]["conditions"] = [
        {"type": "Suspended", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"},
        {"type": "FailureTarget", "status": "True", "lastTransitionTime": "2026-01-01T00:00:07Z"},
    ]
    failing = to_attempt_job(obj)
    assert failing.failure_target and not failing.failed and not failing.suspended
    assert failing.failing_since == datetime(2026, 1, 1, 0, 0, 7, tzinfo=UTC)
