"""Children are matched by the owning job's uid: a re-created job never adopts its
predecessor's Jobs or pods that garbage collection has not removed yet."""

from __future__ import annotations

from kubernetes import client

from diffusion_operator import constants as c
from diffusion_operator.kube import is_labelled_for, is_owned_by


def job_owned_by(uid: str | None) -> client.V1Job:
    refs = [client.V1OwnerReference(api_version="v1", kind="K", name="sd", uid=uid)] if uid else []
    return client.V1Job(metadata=client.V1ObjectMeta(name="sd-a1", owner_references=refs))


def pod_labelled(uid: str | None) -> client.V1Pod:
    labels = {c.LABEL_JOB_NAME: "sd"} | ({c.LABEL_JOB_UID: uid} if uid else {})
    return client.V1Pod(metadata=client.V1ObjectMeta(name="sd-a1-0", labels=labels))


def test_jobs_of_a_previous_incarnation_are_not_ours():
    assert is_owned_by(job_owned_by("new"), "new")
    assert not is_owned_by(job_owned_by("old"), "new")
    assert not is_owned_by(job_owned_by(None), "new")  # orphaned


def test_pods_of_a_previous_incarnation_are_not_ours():
    assert is_labelled_for(pod_labelled("new"), "new")
    assert not is_labelled_for(pod_labelled("old"), "new")
    assert is_labelled_for(pod_labelled(None), "new")  # made before the label existed


def test_a_read_node_and_a_watched_node_give_the_same_health():
    from datetime import UTC, datetime

    from kubernetes import client

    from diffusion_operator.node_health import health_of

    since = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    node = client.V1Node(
        status=client.V1NodeStatus(
            conditions=[
                client.V1NodeCondition(type="Ready", status="Unknown", last_transition_time=since)
            ]
        )
    )
    health = health_of(client.ApiClient().sanitize_for_serialization(node))
    assert (health.ready, health.not_ready_since, health.reason) == (
        False,
        since,
        "NodeUnreachable",
    )
