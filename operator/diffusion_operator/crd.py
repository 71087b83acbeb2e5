"""Generate the CustomResourceDefinition from the pydantic models (`make crd`).

Pydantic emits JSON Schema with $refs, anyOf-with-null and 2020-12 keywords; the API server
wants a structural OpenAPI v3 schema. `to_structural` bridges the two.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from diffusion_operator import constants as c
from diffusion_operator.spec import DiffusionTrainingJobSpec
from diffusion_operator.status_types import DiffusionTrainingJobStatus

MAX_NAME_LENGTH = 48
DNS_1035_LABEL = "^[a-z]([-a-z0-9]*[a-z0-9])?$"
DROPPED_KEYS = {"title", "$defs", "additionalProperties", "prefixItems", "anyOf", "allOf", "$ref"}

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Nodes", "type": "integer", "jsonPath": ".spec.resources.nodes"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step"},
    {"name": "Img/s", "type": "number", "jsonPath": ".status.progress.imagesPerSecond"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
    {"name": "ETA", "type": "string", "jsonPath": ".status.progress.eta"},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Attempt", "type": "integer", "jsonPath": ".status.attempt", "priority": 1},
    {"name": "Checkpoint", "type": "integer", "jsonPath": ".status.checkpoint.step", "priority": 1},
    {"name": "Disruptions", "type": "integer", "jsonPath": ".status.disruptions", "priority": 1},
    {
        "name": "Last-Failure",
        "type": "string",
        "jsonPath": ".status.lastFailure.reason",
        "priority": 1,
    },
]


def to_structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline $refs, collapse optional unions, translate keywords the API server lacks."""
    schema = _resolve_wrappers(schema, defs)
    out: dict[str, Any] = {k: v for k, v in schema.items() if k not in DROPPED_KEYS}
    if out.get("default", 0) is None:
        del out["default"]
    if schema.get("x-kubernetes-int-or-string"):
        out["anyOf"] = schema["anyOf"]  # the two member types, as Kubernetes spells int-or-string
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if "exclusiveMinimum" in out:
        out["minimum"], out["exclusiveMinimum"] = out["exclusiveMinimum"], True
    if "exclusiveMaximum" in out:
        out["maximum"], out["exclusiveMaximum"] = out["exclusiveMaximum"], True
    if "properties" in out:
        out["properties"] = {k: to_structural(v, defs) for k, v in out["properties"].items()}
    if "prefixItems" in schema:
        out["items"] = to_structural(schema["prefixItems"][0], defs)
    elif "items" in out:
        out["items"] = to_structural(out["items"], defs)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict) and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = to_structural(extra, defs)
    return out


def _resolve_wrappers(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Merge $ref / single allOf / optional anyOf targets into the outer schema."""
    outer = dict(schema)
    if "$ref" in outer:
        target = defs[outer.pop("$ref").rsplit("/", 1)[-1]]
        return _resolve_wrappers({**target, **outer}, defs)
    if "allOf" in outer and len(outer["allOf"]) == 1:
        target = outer.pop("allOf")[0]
        return _resolve_wrappers({**target, **outer}, defs)
    if "anyOf" in outer and not outer.get("x-kubernetes-int-or-string"):
        members = [m for m in outer.pop("anyOf") if m.get("type") != "null"]
        if len(members) != 1:
            raise ValueError(f"cannot express a union of {len(members)} types structurally")
        inner = _resolve_wrappers(members[0], defs)
        return {**inner, **{k: v for k, v in outer.items() if k != "default" or v is not None}}
    return outer


def model_schema(model: Any) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return to_structural(raw, raw.get("$defs", {}))


def build_crd() -> dict[str, Any]:
    spec_schema = model_schema(DiffusionTrainingJobSpec)
    status_schema = model_schema(DiffusionTrainingJobStatus)
    status_schema.pop("required", None)
    root = {
        "type": "object",
        "description": "A Stable Diffusion training run on a gang of torchrun worker pods.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "x-kubernetes-validations": [
            {
                "rule": f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
                "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters "
                "(worker Job and pod names are derived from it)",
            },
            {
                "rule": f"self.metadata.name.matches('{DNS_1035_LABEL}')",
                "message": "metadata.name must be a DNS-1035 label: lower-case letters, digits "
                "and '-', starting with a letter and ending with a letter or digit (no dots); "
                "it names the job's headless Service",
            },
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{c.PLURAL}.{c.GROUP}"},
        "spec": {
            "group": c.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": c.KIND,
                "listKind": f"{c.KIND}List",
                "plural": c.PLURAL,
                "singular": c.SINGULAR,
                "shortNames": [c.SHORT_NAME],
                "categories": [c.CATEGORY],
            },
            "versions": [
                {
                    "name": c.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


class _NoAliasDumper(yaml.SafeDumper):
    """Repeated sub-schemas are written out in full: no YAML anchors in a CRD."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_crd_yaml() -> str:
    header = "# Generated from diffusion_operator/spec.py by `make crd`. Do not edit.\n"
    body = yaml.dump(build_crd(), Dumper=_NoAliasDumper, sort_keys=False, width=100)
    return header + body


def main() -> int:
    sys.stdout.write(render_crd_yaml())
    return 0


if __name__ == "__main__":
    sys.exit(main())
