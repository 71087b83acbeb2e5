"""The committed CRD is generated from the models, and the schema is structural."""

from __future__ import annotations

from pathlib import Path

import yaml

from diffusion_operator.crd import build_crd, render_crd_yaml

ROOT = Path(__file__).resolve().parents[2]


def walk(schema: dict, path: str = ""):
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def test_committed_crd_matches_the_models():
    committed = (ROOT / "manifests" / "crd.yaml").read_text()
    assert committed == render_crd_yaml(), "manifests/crd.yaml is stale: run `make crd`"


def test_schema_is_structural():
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        if node.get("x-kubernetes-int-or-string"):  # the one anyOf Kubernetes allows
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            assert "type" not in node, path
            continue
        assert not {"$ref", "anyOf", "allOf", "oneOf", "prefixItems", "title"} & node.keys(), path
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            assert "type" in node, f"{path} has no type"
        assert node.get("default", 0) is not None, f"{path} defaults to null"


def test_printer_columns_and_names():
    crd = build_crd()
    version = crd["spec"]["versions"][0]
    columns = [col["name"] for col in version["additionalPrinterColumns"] if "priority" not in col]
    assert columns == ["Phase", "Nodes", "Step", "Img/s", "Loss", "ETA", "Restarts", "Age"]
    assert crd["spec"]["names"]["shortNames"] == ["dtj"]
    assert crd["spec"]["names"]["categories"] == ["ml"]
    assert version["subresources"] == {"status": {}}


def test_fields_carry_descriptions_and_defaults():
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    training = spec["properties"]["training"]
    assert "description" in training["properties"]["globalBatchSize"]
    assert spec["properties"]["resources"]["properties"]["gpusPerNode"]["default"] == 8
    assert spec["properties"]["resources"]["default"] == {}
    assert spec["properties"]["failurePolicy"]["properties"]["maxRestarts"]["default"] == 3
    # Recipe fields have no schema default, so presets can fill them.
    assert "default" not in training["properties"]["globalBatchSize"]


def test_crd_yaml_has_no_anchors():
    text = render_crd_yaml()
    assert "&id" not in text and "*id" not in text
    assert yaml.safe_load(text)["kind"] == "CustomResourceDefinition"


def test_quantities_are_int_or_string():
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    resources = schema["properties"]["spec"]["properties"]["resources"]["properties"]
    for field in ("cpu", "memory", "shmSize"):
        assert resources[field]["x-kubernetes-int-or-string"] is True, field
        assert "pattern" in resources[field], field
