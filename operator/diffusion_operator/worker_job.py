"""Build the Indexed batch/v1 Job of one attempt: a gang of torchrun worker pods."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffusion_operator import constants as c
from diffusion_operator import names
from diffusion_operator.builders import NCCL_DEFAULTS, Owner, child_metadata
from diffusion_operator.spec import DiffusionTrainingJobSpec, spec_fingerprint

NON_ROOT_UID = 1000
COMPLETION_INDEX_FIELD = f"metadata.annotations['{c.JOB_COMPLETION_INDEX_ANNOTATION}']"
# torchrun's SIGTERM -> SIGKILL wait for its workers: the pod's grace period minus this margin
# (torchrun itself must exit before the kubelet kills the container).
SHUTDOWN_MARGIN_S = 10
NODE_AVOIDANCE_WEIGHT = 100
# Hang detection, in order: the trainer's watchdog (1x hangTimeoutSeconds, stacks in the logs),
# the operator's backstop (1.25x), the collective timeout (2x).
COLLECTIVE_TIMEOUT_FACTOR = 2


@dataclass(frozen=True)
class AttemptInputs:
    """What differs between the attempts of one spec."""

    attempt: int
    resume_from: str | None = None
    suspend: bool = False
    avoid_nodes: list[str] = field(default_factory=list)
    trainer_env: dict[str, str] = field(default_factory=dict)


def build_worker_job(
    owner: Owner, spec: DiffusionTrainingJobSpec, inputs: AttemptInputs
) -> dict[str, Any]:
    attempt = inputs.attempt
    job_name = names.attempt_job_name(owner.name, attempt)
    attempt_labels = {
        c.LABEL_ATTEMPT: str(attempt),
        c.LABEL_ROLE: "worker",
        c.LABEL_JOB_UID: owner.uid,
    }
    job_labels = dict(attempt_labels)
    if spec.run_policy.queue_name:
        job_labels[c.KUEUE_QUEUE_LABEL] = spec.run_policy.queue_name
    nodes = spec.resources.nodes
    metadata = child_metadata(owner, job_name, job_labels)
    metadata["annotations"] = {c.ANNOTATION_SPEC_HASH: spec_fingerprint(spec)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "completionMode": "Indexed",
            "completions": nodes,
            "parallelism": nodes,
            "backoffLimit": 0,
            # Never a lone replacement inside the attempt: it could not join the gang's
            # rendezvous. A lost worker ends the attempt; the operator restarts the gang.
            "podReplacementPolicy": "Failed",
            "suspend": inputs.suspend,
            "template": {
                "metadata": {
                    "labels": {**spec.pod_labels, **owner.labels(), **attempt_labels},
                    "annotations": dict(spec.pod_annotations),
                },
                "spec": build_pod_spec(owner, spec, inputs),
            },
        },
    }


def build_pod_spec(
    owner: Owner, spec: DiffusionTrainingJobSpec, inputs: AttemptInputs
) -> dict[str, Any]:
    resources = spec.resources
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "subdomain": names.service_name(owner.name),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": spec.run_policy.termination_grace_period_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": NON_ROOT_UID,
            "runAsGroup": NON_ROOT_UID,
            "fsGroup": NON_ROOT_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [build_container(owner, spec, inputs)],
        "volumes": build_volumes(owner, spec),
    }
    if spec.service_account_name:
        pod["serviceAccountName"] = spec.service_account_name
    if resources.node_selector:
        pod["nodeSelector"] = dict(resources.node_selector)
    if resources.tolerations:
        pod["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in resources.tolerations
        ]
    affinity = with_node_avoidance(resources.affinity, inputs.avoid_nodes)
    if affinity:
        pod["affinity"] = affinity
    if resources.priority_class_name:
        pod["priorityClassName"] = resources.priority_class_name
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    return pod


def with_node_avoidance(
    affinity: dict[str, Any] | None, avoid_nodes: list[str]
) -> dict[str, Any] | None:
    """The user's affinity plus a preference against nodes that just failed a worker:
    preferred, not required, so a pool with no spare node still schedules once they recover."""
    if not avoid_nodes:
        return affinity
    merged = dict(affinity or {})
    node_affinity = dict(merged.get("nodeAffinity") or {})
    avoid = {
        "weight": NODE_AVOIDANCE_WEIGHT,
        "preference": {
            "matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": avoid_nodes}
            ]
        },
    }
    preferred = list(node_affinity.get("preferredDuringSchedulingIgnoredDuringExecution") or [])
    node_affinity["preferredDuringSchedulingIgnoredDuringExecution"] = [*preferred, avoid]
    merged["nodeAffinity"] = node_affinity
    return merged


def build_container(
    owner: Owner, spec: DiffusionTrainingJobSpec, inputs: AttemptInputs
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": c.WORKER_CONTAINER,
        "image": spec.image,
        # Topology comes from the PET_* variables torchrun reads.
        "command": ["torchrun"],
        "args": [
            "-m",
            "diffusion_trainer",
            "--config",
            f"{c.CONFIG_MOUNT_DIR}/{c.CONFIG_FILE_NAME}",
        ],
        "env": build_env(owner, spec, inputs),
        "ports": [
            {"name": "rendezvous", "containerPort": c.RENDEZVOUS_PORT, "protocol": "TCP"},
            {"name": c.METRICS_PORT_NAME, "containerPort": c.METRICS_PORT, "protocol": "TCP"},
        ],
        "resources": build_resources(spec),
        "volumeMounts": build_volume_mounts(spec),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], **_added_capabilities(spec)},
        },
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    env_from = [
        {
            "secretRef": {"name": ref.secret_ref.name},
            **({"prefix": ref.prefix} if ref.prefix else {}),
        }
        for ref in spec.env_from
    ]
    if spec.credentials:
        env_from.append({"secretRef": {"name": spec.credentials.secret_ref.name}})
    if env_from:
        container["envFrom"] = env_from
    return container


def _added_capabilities(spec: DiffusionTrainingJobSpec) -> dict[str, list[str]]:
    added = spec.pod_security.add_capabilities
    return {"add": list(added)} if added else {}


def build_env(
    owner: Owner, spec: DiffusionTrainingJobSpec, inputs: AttemptInputs
) -> list[dict[str, Any]]:
    attempt, resume_from = inputs.attempt, inputs.resume_from
    nodes = spec.resources.nodes
    per_node = spec.processes_per_node
    # A one-pod gang rendezvous inside its pod: it never waits for (or depends on) cluster DNS
    # publishing its own record.
    master = (
        "127.0.0.1" if nodes == 1 else names.master_address(owner.name, attempt, owner.namespace)
    )
    node_rank = {"valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX_FIELD}}}
    topology: list[tuple[str, dict[str, Any]]] = [
        ("NODE_RANK", node_rank),
        ("PET_NODE_RANK", node_rank),
        ("NNODES", {"value": str(nodes)}),
        ("PET_NNODES", {"value": str(nodes)}),
        ("NPROC_PER_NODE", {"value": str(per_node)}),
        ("PET_NPROC_PER_NODE", {"value": str(per_node)}),
        ("WORLD_SIZE", {"value": str(nodes * per_node)}),
        ("MASTER_ADDR", {"value": master}),
        ("PET_MASTER_ADDR", {"value": master}),
        ("MASTER_PORT", {"value": str(c.RENDEZVOUS_PORT)}),
        ("PET_MASTER_PORT", {"value": str(c.RENDEZVOUS_PORT)}),
        ("DTJ_JOB_NAME", {"value": owner.name}),
        ("DTJ_NAMESPACE", {"value": owner.namespace}),
        ("DTJ_ATTEMPT", {"value": str(attempt)}),
        ("RESUME_FROM", {"value": resume_from or ""}),
        ("POD_NAME", {"valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        ("HOME", {"value": "/tmp"}),
    ]
    defaults = {**NCCL_DEFAULTS, **failure_env(spec), **dict(sorted(inputs.trainer_env.items()))}
    topology += [(name, {"value": value}) for name, value in defaults.items()]
    user = {e.name: e.model_dump(by_alias=True, exclude_none=True) for e in spec.env}
    merged = [{"name": name, **value} for name, value in topology if name not in user]
    return merged + list(user.values())


def failure_env(spec: DiffusionTrainingJobSpec) -> dict[str, str]:
    """How the trainer takes part in the failure policy (docs/fault-tolerance.md)."""
    policy = spec.failure_policy
    grace_s = spec.run_policy.termination_grace_period_seconds
    env = {
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(max(grace_s - SHUTDOWN_MARGIN_S, 1)),
        "DTJ_MAX_NONFINITE_SKIPS": str(policy.non_finite.max_consecutive_skips),
    }
    if policy.hang_timeout_seconds:
        env["DTJ_HANG_TIMEOUT_S"] = str(policy.hang_timeout_seconds)
        # A wedged collective fails on its own too, where the watchdog thread cannot run; later
        # than the watchdog, which dumps every rank's stacks first.
        env["DTJ_COLLECTIVE_TIMEOUT_S"] = str(
            COLLECTIVE_TIMEOUT_FACTOR * policy.hang_timeout_seconds
        )
    return env


def build_resources(spec: DiffusionTrainingJobSpec) -> dict[str, dict[str, str]]:
    resources = spec.resources
    limits: dict[str, str] = {}
    if resources.gpus_per_node:
        limits["nvidia.com/gpu"] = str(resources.gpus_per_node)
    for key in ("cpu", "memory"):
        value = getattr(resources, key)
        if value:
            limits[key] = value
    return {"limits": limits, "requests": dict(limits)} if limits else {}


def build_volumes(owner: Owner, spec: DiffusionTrainingJobSpec) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": names.config_map_name(owner.name)}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.resources.shm_size}},
        {"name": "tmp", "emptyDir": {}},
    ]
    for index, mount in enumerate(spec.pvc_mounts):
        claim = {"claimName": mount.claim_name, "readOnly": mount.read_only}
        volumes.append({"name": f"pvc-{index}", "persistentVolumeClaim": claim})
    return volumes


def build_volume_mounts(spec: DiffusionTrainingJobSpec) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": c.CONFIG_MOUNT_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    for index, mount in enumerate(spec.pvc_mounts):
        mounts.append(
            {"name": f"pvc-{index}", "mountPath": mount.mount_path, "readOnly": mount.read_only}
        )
    return mounts
