"""Bad input is refused by the API server at `kubectl apply`, naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

pytestmark = pytest.mark.cluster

VALID_SPEC: dict[str, Any] = {
    "image": "ghcr.io/diffusion-operator/trainer:0.1.0",
    "preset": "tiny-cpu",
    "training": {"globalBatchSize": 16, "microBatchSize": 8},
    "resources": {"nodes": 2, "gpusPerNode": 0},
}


def manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "diffusion.dev/v1alpha1",
        "kind": "DiffusionTrainingJob",
        "metadata": {"name": name},
        "spec": spec,
    }


def with_changes(**sections: Any) -> dict[str, Any]:
    spec = copy.deepcopy(VALID_SPEC)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key].update(value)
        else:
            spec[key] = value
    return spec


INVALID = [
    ("wrong-type", with_changes(resources={"nodes": "two"}), "spec.resources.nodes"),
    ("negative-nodes", with_changes(resources={"nodes": -1}), "spec.resources.nodes"),
    (
        "indivisible-batch",
        with_changes(training={"globalBatchSize": 20, "microBatchSize": 8}),
        "globalBatchSize",
    ),
    ("unknown-preset", with_changes(preset="sd3-large"), "spec.preset"),
    ("bad-image", with_changes(image="Trainer Image!!"), "spec.image"),
    ("missing-image", {k: v for k, v in VALID_SPEC.items() if k != "image"}, "spec.image"),
    (
        "privileged",
        with_changes(resources={"securityContext": {"privileged": True}}),
        "spec.resources.securityContext",
    ),
    (
        "capability",
        with_changes(podSecurity={"addCapabilities": ["SYS_ADMIN"]}),
        "spec.podSecurity.addCapabilities",
    ),
    ("unknown-field", with_changes(training={"learningRate": 1}), "spec.training.learningRate"),
    ("lr-range", with_changes(training={"lr": 5}), "spec.training.lr"),
    ("prediction-type", with_changes(model={"predictionType": "x0"}), "spec.model.predictionType"),
    (
        "env-value-and-secret",
        with_changes(
            env=[
                {
                    "name": "A",
                    "value": "1",
                    "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
                }
            ]
        ),
        "spec.env[0]",
    ),
    (
        "configmap-env",
        with_changes(env=[{"name": "A", "valueFrom": {"configMapKeyRef": {}}}]),
        "spec.env[0].valueFrom.configMapKeyRef",
    ),
    ("shm-size", with_changes(resources={"shmSize": "lots"}), "spec.resources.shmSize"),
    ("negative-cpu", with_changes(resources={"cpu": -2}), "a quantity cannot be negative"),
    ("fractional-number", with_changes(resources={"cpu": 0.5}), "spec.resources.cpu"),
    ("gpus-range", with_changes(resources={"gpusPerNode": 17}), "spec.resources.gpusPerNode"),
    (
        "checkpoint-scheme",
        with_changes(checkpoint={"uri": "hdfs://nn/ckpt"}),
        "spec.checkpoint.uri must be a local/PVC path or a URI with one of the schemes",
    ),
    (
        "data-scheme",
        with_changes(data={"train": {"remote": "http://example/shards"}}),
        "spec.data.train.remote must be a local/PVC path",
    ),
    (
        "rule-without-criteria",
        with_changes(failurePolicy={"rules": [{"action": "Fail", "onClasses": []}]}),
        "a failurePolicy rule needs at least one of onClasses, onReasons, onExitCodes",
    ),
    (
        "rule-unknown-class",
        with_changes(failurePolicy={"rules": [{"action": "Fail", "onClasses": ["Gremlins"]}]}),
        "spec.failurePolicy.rules[0].onClasses[0]",
    ),
    (
        "hang-timeout-range",
        with_changes(failurePolicy={"hangTimeoutSeconds": 1}),
        "spec.failurePolicy.hangTimeoutSeconds",
    ),
]


@pytest.mark.parametrize(("case", "spec", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_spec_is_refused_naming_the_field(dtjs, case, spec, field):
    code, output = dtjs.apply(manifest(f"bad-{case}", spec))
    assert code != 0, f"accepted: {output}"
    assert field in output, output
    assert not dtjs.custom.list_namespaced_custom_object(
        "diffusion.dev", "v1alpha1", dtjs.namespace, "diffusiontrainingjobs"
    )["items"]


def test_name_too_long_is_refused(dtjs):
    code, output = dtjs.apply(manifest("x" * 49, VALID_SPEC))
    assert code != 0
    assert "metadata.name must be at most 48 characters" in output


@pytest.mark.parametrize("name", ["sd.v2", "2sd", "sd-"])
def test_name_that_is_not_a_dns_label_is_refused(dtjs, name):
    """A dot or a leading digit passes the API server's own name check but makes an invalid
    Service name: refused at apply, with the reason."""
    code, output = dtjs.apply(manifest(name, VALID_SPEC))
    assert code != 0, f"accepted: {output}"
    assert "must be a DNS-1035 label" in output, output
    assert "no dots" in output


def test_valid_spec_is_accepted_with_defaults(dtjs):
    code, output = dtjs.apply(manifest("good", VALID_SPEC))
    assert code == 0, output
    spec = dtjs.get("good")["spec"]
    assert spec["failurePolicy"]["maxRestarts"] == 3
    assert spec["runPolicy"]["suspend"] is False
    assert spec["resources"]["shmSize"] == "16Gi"
    assert spec["failurePolicy"]["maxDisruptions"] == 100
    assert spec["failurePolicy"]["nonFinite"] == {
        "maxConsecutiveSkips": 5,
        "rollbackCheckpoints": 1,
        "maxRollbacks": 3,
    }


def test_quantities_are_integers_or_strings_as_in_core_kubernetes(dtjs):
    spec = with_changes(resources={"cpu": 8, "memory": "3Gi", "shmSize": 1073741824})
    code, output = dtjs.apply(manifest("unquoted", spec))
    assert code == 0, output
    resources = dtjs.get("unquoted")["spec"]["resources"]
    assert (resources["cpu"], resources["shmSize"]) == (8, 1073741824)  # stored as written


def test_object_store_uris_and_rules_are_accepted(dtjs):
    spec = with_changes(
        checkpoint={"uri": "s3://bucket/ckpt"},
        data={"train": {"remote": "gs://bucket/shards"}},
        failurePolicy={"rules": [{"action": "RestartNotCounted", "onExitCodes": [75]}]},
    )
    code, output = dtjs.apply(manifest("stores", spec))
    assert code == 0, output


def test_nodes_cannot_change_unless_suspended(dtjs):
    assert dtjs.apply(manifest("resize", VALID_SPEC))[0] == 0
    bigger = {"resources": {"nodes": 4}, "training": {"globalBatchSize": 32}}
    code, output = dtjs.apply(manifest("resize", with_changes(**bigger)))
    assert code != 0
    assert "spec.resources.nodes cannot change while the job is active" in output
    assert dtjs.apply(manifest("resize", with_changes(runPolicy={"suspend": True})))[0] == 0
    suspended_resize = with_changes(**bigger, runPolicy={"suspend": True})
    code, output = dtjs.apply(manifest("resize", suspended_resize))
    assert code == 0, output


def test_preset_changes_only_while_suspended_and_says_so(dtjs):
    assert dtjs.apply(manifest("grow", with_changes(preset="sd2-base-256")))[0] == 0
    code, output = dtjs.apply(manifest("grow", with_changes(preset="sd2-base-512")))
    assert code != 0
    assert "spec.preset can change only while the job is suspended" in output, output
    suspended = with_changes(preset="sd2-base-256", runPolicy={"suspend": True})
    assert dtjs.apply(manifest("grow", suspended))[0] == 0
    moved = with_changes(preset="sd2-base-512", runPolicy={"suspend": True})
    assert dtjs.apply(manifest("grow", moved))[0] == 0


def test_explain_describes_the_training_section(control_plane, crd):
    text = control_plane.kubectl("explain", "dtj.spec.training")
    assert "globalBatchSize" in text
    assert "Images per optimizer step" in text
