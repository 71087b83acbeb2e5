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
