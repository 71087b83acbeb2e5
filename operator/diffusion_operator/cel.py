"""CEL rules of the CRD: cross-field checks the API server enforces at `kubectl apply`."""

from __future__ import annotations

from pydantic import JsonValue

_PROCESSES_PER_NODE = (
    "(has(self.resources.processesPerNode) ? self.resources.processesPerNode"
    " : (self.resources.gpusPerNode > 0 ? self.resources.gpusPerNode : 1))"
)
_RANKS_X_MICRO = f"self.resources.nodes * {_PROCESSES_PER_NODE} * self.training.microBatchSize"


# What the trainer image can open: local/PVC paths and these fsspec schemes (s3fs, gcsfs).
URI_SCHEMES = ("s3", "gs", "gcs", "file")
_URI_FIELDS = (
    "checkpoint.uri",
    "checkpoint.resumeFrom",
    "data.train.remote",
    "data.eval.remote",
)


def _uri_rule(path: str) -> dict[str, JsonValue]:
    """A URI the trainer could not open is refused at apply, not by a failing pod."""
    parts = path.split(".")
    guards = " && ".join(f"has(self.{'.'.join(parts[: i + 1])})" for i in range(len(parts)))
    value = f"self.{path}"
    schemes = "|".join(URI_SCHEMES)
    return {
        "rule": f"!({guards}) || !{value}.contains('://') || {value}.matches('^({schemes})://')",
        "message": (
            f"spec.{path} must be a local/PVC path or a URI with one of the schemes "
            f"{', '.join(s + '://' for s in URI_SCHEMES)}; other schemes cannot be opened "
            "by the trainer image"
        ),
        "fieldPath": f".{path}",
        "reason": "FieldValueInvalid",
    }


def _unchanged_unless_suspended(path: str) -> str:
    return f"oldSelf.runPolicy.suspend || self.{path} == oldSelf.{path}"


def _optional_unchanged_unless_suspended(path: str) -> str:
    parent, _, leaf = path.rpartition(".")
    self_has = f"has(self.{parent}.{leaf})" if parent else f"has(self.{leaf})"
    old_has = f"has(oldSelf.{parent}.{leaf})" if parent else f"has(oldSelf.{leaf})"
    return (
        f"oldSelf.runPolicy.suspend || ({self_has} == {old_has}"
        f" && (!{self_has} || self.{path} == oldSelf.{path}))"
    )


SPEC_RULES: list[JsonValue] = [
    {
        "rule": (
            "!has(self.training) || !has(self.training.globalBatchSize)"
            " || !has(self.training.microBatchSize)"
            f" || self.training.globalBatchSize % ({_RANKS_X_MICRO}) == 0"
        ),
        "message": (
            "spec.training.globalBatchSize must be a multiple of resources.nodes x processes per"
            " node (processesPerNode, else gpusPerNode, else 1) x training.microBatchSize;"
            " change one of them"
        ),
        "fieldPath": ".training.globalBatchSize",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": _unchanged_unless_suspended("resources.nodes"),
        "message": (
            "spec.resources.nodes cannot change while the job is active; "
            "set spec.runPolicy.suspend: true first, or create a new job"
        ),
        "fieldPath": ".resources.nodes",
    },
    {
        "rule": _unchanged_unless_suspended("resources.gpusPerNode"),
        "message": (
            "spec.resources.gpusPerNode cannot change while the job is active; "
            "set spec.runPolicy.suspend: true first, or create a new job"
        ),
        "fieldPath": ".resources.gpusPerNode",
    },
    {
        "rule": _optional_unchanged_unless_suspended("resources.processesPerNode"),
        "message": (
            "spec.resources.processesPerNode cannot change while the job is active; "
            "set spec.runPolicy.suspend: true first"
        ),
        "fieldPath": ".resources.processesPerNode",
    },
    {
        "rule": _optional_unchanged_unless_suspended("preset"),
        "message": (
            "spec.preset can change only while the job is suspended (spec.runPolicy.suspend:"
            " true); the next attempt resumes the latest checkpoint under the new preset, so it"
            " must keep the model (e.g. sd2-base-256 to sd2-base-512); else create a new job"
        ),
        "fieldPath": ".preset",
    },
    {
        "rule": _unchanged_unless_suspended("image"),
        "message": (
            "spec.image cannot change while the job is active; "
            "set spec.runPolicy.suspend: true first"
        ),
        "fieldPath": ".image",
    },
]

SPEC_RULES += [_uri_rule(path) for path in _URI_FIELDS]

FAILURE_RULE_RULES: list[JsonValue] = [
    {
        "rule": " || ".join(
            f"(has(self.{name}) && size(self.{name}) > 0)"
            for name in ("onClasses", "onReasons", "onExitCodes")
        ),
        "message": "a failurePolicy rule needs at least one of onClasses, onReasons, onExitCodes",
    }
]

ENV_VAR_RULES: list[JsonValue] = [
    {
        "rule": "!(has(self.value) && has(self.valueFrom))",
        "message": "an env var has either value or valueFrom.secretKeyRef, not both",
    }
]

TOLERATION_RULES: list[JsonValue] = [
    {
        "rule": "!has(self.operator) || self.operator != 'Exists' || !has(self.value)",
        "message": "a toleration with operator Exists must not have a value",
    }
]
