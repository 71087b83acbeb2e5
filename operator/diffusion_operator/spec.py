"""The DiffusionTrainingJob API (v1alpha1) as pydantic models: the single source of truth.

`make crd` turns these into the CRD's structural schema. Recipe sections (model, data, training,
eval, checkpoint) are the trainer's own config models in partial form: a spec holds only what the
user wrote, and presets and defaults fill the rest when the operator renders the trainer config.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, WithJsonSchema

from diffusion_operator.cel import (
    ENV_VAR_RULES,
    FAILURE_RULE_RULES,
    SPEC_RULES,
    TOLERATION_RULES,
)
from diffusion_operator.partial import make_partial
from diffusion_trainer.config import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    Section,
    TrainingConfig,
)

PRESETS = ("tiny-cpu", "sd2-base-256", "sd2-base-512")
IMAGE_PATTERN = (
    r"^([a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?(:[0-9]+)?/)?"
    r"[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
)
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"

PartialModel = make_partial(ModelConfig)
PartialData = make_partial(DataConfig)
PartialTraining = make_partial(TrainingConfig)
PartialEval = make_partial(EvalConfig)
PartialCheckpoint = make_partial(CheckpointConfig)


def quantity_as_string(value: object) -> object:
    """An unquoted quantity (`cpu: 8`) arrives as an integer, as Kubernetes accepts it."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


# Integer or string, as core Kubernetes quantities are (`cpu: 8` and `cpu: "8"`); kept a string.
Quantity = Annotated[
    str,
    BeforeValidator(quantity_as_string),
    Field(pattern=QUANTITY_PATTERN, max_length=32),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": QUANTITY_PATTERN,  # strings only
            "maxLength": 32,
            "x-kubernetes-validations": [
                {
                    "rule": "type(self) != int || self >= 0",
                    "message": "a quantity cannot be negative: write e.g. 8 or '500m'",
                }
            ],
        }
    ),
]
ResourceName = Annotated[str, Field(min_length=1, max_length=253, pattern=NAME_PATTERN)]


class ObjectRef(Section):
    name: Annotated[ResourceName, Field(description="Name of the object in the job's namespace.")]


class SecretKeyRef(Section):
    name: ResourceName
    key: Annotated[str, Field(min_length=1, max_length=253)]
    optional: bool | None = None


class EnvVarSource(Section):
    """Only Secret references: values never get copied into the job object."""

    secret_key_ref: SecretKeyRef


class EnvVar(Section):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": ENV_VAR_RULES})

    name: Annotated[str, Field(min_length=1, max_length=256, pattern=ENV_NAME_PATTERN)]
    value: str | None = None
    value_from: EnvVarSource | None = None


class EnvFromSource(Section):
    prefix: str | None = None
    secret_ref: ObjectRef


class Toleration(Section):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": TOLERATION_RULES})

    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class Resources(Section):
    """Where and how big: nodes x GPUs per node, and the per-pod requests."""

    nodes: Annotated[int, Field(ge=1, le=1024, description="Worker pods (one per node).")] = 1
    gpus_per_node: Annotated[
        int,
        Field(ge=0, le=16, description="GPUs (nvidia.com/gpu) per pod; 0 trains on CPU."),
    ] = 8
    processes_per_node: Annotated[
        int | None,
        Field(
            ge=1,
            le=64,
            description="torchrun processes per pod; default: gpusPerNode, or 1 on CPU.",
        ),
    ] = None
    cpu: Annotated[
        Quantity | None,
        Field(description="CPU request and limit per pod: 8 or '500m' (a fraction is quoted)."),
    ] = None
    memory: Annotated[
        Quantity | None, Field(description="Memory request and limit per pod, e.g. 64Gi.")
    ] = None
    shm_size: Annotated[
        Quantity, Field(description="Size of the memory-backed /dev/shm (DataLoader, NCCL).")
    ] = "16Gi"
    node_selector: Annotated[
        dict[str, str], Field(description="Labels the worker nodes must have.")
    ] = Field(default_factory=dict)
    tolerations: Annotated[list[Toleration], Field(max_length=64)] = Field(default_factory=list)
    affinity: Annotated[
        dict[str, Any] | None,
        Field(
            description="Pod affinity (core/v1 Affinity), passed through.",
            json_schema_extra={"x-kubernetes-preserve-unknown-fields": True, "type": "object"},
        ),
    ] = None
    priority_class_name: ResourceName | None = None


class PodSecurity(Section):
    """Opt-ins beyond Pod Security "restricted"; nothing privileged can be asked for."""

    add_capabilities: Annotated[
        list[Literal["IPC_LOCK", "SYS_NICE"]],
        Field(description="Extra Linux capabilities (IPC_LOCK for RDMA); breaks 'restricted'."),
    ] = Field(default_factory=list)


FailureClass = Literal["Disruption", "ConfigError", "NonFinite", "OOMKilled", "Hang", "Error"]
FAILURE_CLASSES: tuple[FailureClass, ...] = (
    "Disruption",
    "ConfigError",
    "NonFinite",
    "OOMKilled",
    "Hang",
    "Error",
)
FailureAction = Literal["Restart", "RestartNotCounted", "Rollback", "Fail"]


class FailureRule(Section):
    """One ordered rule: the first rule whose every given criterion matches an attempt's end
    decides the action (as batch/v1 podFailurePolicy and JobSet failure policy rules do)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": FAILURE_RULE_RULES})

    action: Annotated[
        FailureAction,
        Field(
            description="Restart (counted against maxRestarts), RestartNotCounted (counted "
            "against maxDisruptions), Rollback (resume from an older checkpoint, counted "
            "against nonFinite.maxRollbacks) or Fail."
        ),
    ]
    on_classes: Annotated[
        list[FailureClass], Field(max_length=8, description="Match these failure classes.")
    ] = Field(default_factory=list)
    on_reasons: Annotated[
        list[Annotated[str, Field(max_length=128)]],
        Field(max_length=32, description="Match these reasons (e.g. PreemptionByScheduler)."),
    ] = Field(default_factory=list)
    on_exit_codes: Annotated[
        list[Annotated[int, Field(ge=0, le=255)]],
        Field(max_length=32, description="Match these exit codes of the first failed worker."),
    ] = Field(default_factory=list)


class NonFinitePolicy(Section):
    """What a run whose gradients stay non-finite does (see docs/fault-tolerance.md)."""

    max_consecutive_skips: Annotated[
        int,
        Field(
            ge=0,
            le=1000,
            description="Optimizer steps with non-finite gradients skipped in a row before the "
            "attempt ends as NonFinite; 0 ends it at the first one.",
        ),
    ] = 5
    rollback_checkpoints: Annotated[
        int,
        Field(
            ge=1,
            le=100,
            description="A rollback resumes from this many committed checkpoints before the "
            "newest, with the data order moved past the offending batches.",
        ),
    ] = 1
    max_rollbacks: Annotated[
        int, Field(ge=0, le=100, description="Rollbacks before the job is Failed.")
    ] = 3


class FailurePolicy(Section):
    max_restarts: Annotated[
        int,
        Field(
            ge=0,
            le=1000,
            description="Counted gang restarts (failures of the job itself) "
            "before the job is Failed.",
        ),
    ] = 3
    max_disruptions: Annotated[
        int,
        Field(
            ge=0,
            le=10000,
            description="Restarts caused by the cluster (preemption, eviction, node loss), "
            "which never spend maxRestarts, before the job is Failed.",
        ),
    ] = 100
    backoff_seconds: Annotated[
        int, Field(ge=0, le=3600, description="First restart delay; doubles per restart.")
    ] = 10
    max_backoff_seconds: Annotated[int, Field(ge=0, le=86400)] = 300
    hang_timeout_seconds: Annotated[
        int | None,
        Field(
            ge=10,
            le=86400,
            description="A training step that does not finish this long ends the attempt as "
            "Hang (stacks of every rank in the logs); also the collective timeout. Startup, "
            "checkpoint saves and evaluation do not count.",
        ),
    ] = None
    node_not_ready_timeout_seconds: Annotated[
        int,
        Field(
            ge=0,
            le=86400,
            description="A worker whose node is NotReady or unreachable this long ends the "
            "attempt as a Disruption.",
        ),
    ] = 60
    pod_termination_timeout_seconds: Annotated[
        int,
        Field(
            ge=0,
            le=86400,
            description="How long past its grace period a terminating worker on a NotReady, "
            "unreachable or deleted node is waited for before it is force-deleted.",
        ),
    ] = 30
    node_avoidance_seconds: Annotated[
        int,
        Field(
            ge=0,
            le=604800,
            description="Attempts created this long after a node failed a worker prefer other "
            "nodes (0: never avoid).",
        ),
    ] = 3600
    non_finite: Annotated[NonFinitePolicy, Field(json_schema_extra={"default": {}})] = Field(
        default_factory=NonFinitePolicy
    )
    rules: Annotated[
        list[FailureRule],
        Field(
            max_length=32,
            description="Ordered overrides of the default action per failure class; the first "
            "match wins.",
        ),
    ] = Field(default_factory=list)


class RunPolicy(Section):
    suspend: Annotated[
        bool, Field(description="Suspend: delete the workers' pods and keep the job.")
    ] = False
    queue_name: Annotated[
        str | None,
        Field(max_length=63, description="Kueue LocalQueue; Kueue admits by unsuspending."),
    ] = None
    active_deadline_seconds: Annotated[
        int | None,
        Field(
            ge=1,
            description="Fail the job after running this long; time suspended or queued "
            "does not count (the clock restarts at resume, as for a batch/v1 Job).",
        ),
    ] = None
    start_deadline_seconds: Annotated[
        int | None,
        Field(ge=1, description="Fail an attempt whose workers are not all running by then."),
    ] = None
    ttl_seconds_after_finished: Annotated[
        int | None, Field(ge=0, description="Delete the job this long after it finished.")
    ] = None
    termination_grace_period_seconds: Annotated[
        int, Field(ge=0, le=3600, description="Time a worker gets to write its final checkpoint.")
    ] = 300


class PvcMount(Section):
    """A PersistentVolumeClaim mounted into every worker (datasets, checkpoints)."""

    claim_name: ResourceName
    mount_path: Annotated[str, Field(pattern=r"^/.*", max_length=1024)]
    read_only: bool = False


class Credentials(Section):
    secret_ref: Annotated[
        ObjectRef, Field(description="Secret whose keys become env vars (e.g. AWS_*).")
    ]


class DiffusionTrainingJobSpec(Section):
    """What to train, on what, and how to behave when things fail."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": SPEC_RULES})

    preset: Annotated[
        Literal["tiny-cpu", "sd2-base-256", "sd2-base-512"] | None,
        Field(description="Recipe defaults; explicit fields override them."),
    ] = None
    image: Annotated[
        str, Field(max_length=512, pattern=IMAGE_PATTERN, description="Trainer image.")
    ]
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: list[ObjectRef] = Field(default_factory=list)
    service_account_name: ResourceName | None = None
    pod_labels: Annotated[
        dict[str, str],
        Field(max_length=32, description="Extra labels on worker pods (e.g. for cost reports)."),
    ] = Field(default_factory=dict)
    pod_annotations: Annotated[
        dict[str, str],
        Field(max_length=32, description="Extra annotations on worker pods (e.g. for a mesh)."),
    ] = Field(default_factory=dict)
    model: PartialModel | None = None  # type: ignore[valid-type]
    data: PartialData | None = None  # type: ignore[valid-type]
    training: PartialTraining | None = None  # type: ignore[valid-type]
    eval: PartialEval | None = None  # type: ignore[valid-type]
    checkpoint: PartialCheckpoint | None = None  # type: ignore[valid-type]
    resources: Annotated[Resources, Field(json_schema_extra={"default": {}})] = Field(
        default_factory=Resources
    )
    env: Annotated[list[EnvVar], Field(max_length=256)] = Field(default_factory=list)
    env_from: Annotated[list[EnvFromSource], Field(max_length=32)] = Field(default_factory=list)
    credentials: Credentials | None = None
    pvc_mounts: Annotated[list[PvcMount], Field(max_length=16)] = Field(default_factory=list)
    pod_security: Annotated[PodSecurity, Field(json_schema_extra={"default": {}})] = Field(
        default_factory=PodSecurity
    )
    failure_policy: Annotated[FailurePolicy, Field(json_schema_extra={"default": {}})] = Field(
        default_factory=FailurePolicy
    )
    run_policy: Annotated[RunPolicy, Field(json_schema_extra={"default": {}})] = Field(
        default_factory=RunPolicy
    )

    @property
    def processes_per_node(self) -> int:
        return self.resources.processes_per_node or max(self.resources.gpus_per_node, 1)


def spec_fingerprint(spec: DiffusionTrainingJobSpec) -> str:
    """A short hash of everything an attempt is built from; suspending does not change it."""
    dumped = spec.model_dump(mode="json", exclude={"run_policy": {"suspend"}})
    return hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()[:16]
