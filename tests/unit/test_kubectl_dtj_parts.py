"""`kubectl dtj`'s pure parts: --set parsing, the job table, the describe text, completion."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from diffusion_operator.kubectl_plugin.complete import candidates
from diffusion_operator.kubectl_plugin.describe import describe_text
from diffusion_operator.kubectl_plugin.submit import SubmitError, build_manifest, parse_override
from diffusion_operator.kubectl_plugin.table import age_text, job_row

IMAGE = "ghcr.io/diffusion-operator/trainer:0.1.0"
FAILED_JOB = {
    "metadata": {"name": "sd2", "namespace": "team-a", "creationTimestamp": "2026-12-01T10:00:00Z"},
    "spec": {"preset": "sd2-base-256", "image": IMAGE, "resources": {"nodes": 4}},
    "status": {
        "phase": "Running",
        "attempt": 2,
        "restarts": 1,
        "progress": {"step": 120, "totalSteps": 1000, "loss": 0.123456, "imagesPerSecond": 812.3},
        "checkpoint": {"latestUri": "s3://b/sd2/step-00000100", "step": 100},
        "lastFailure": {
            "attempt": 1,
            "reason": "OOMKilled",
            "class": "OOMKilled",
            "action": "Restart",
            "exitCode": 137,
            "message": "worker 3 was killed for memory",
        },
        "conditions": [{"type": "Running", "status": "True", "reason": "AllWorkersReady"}],
    },
}


def test_overrides_parse_as_yaml_scalars_with_escaped_dots():
    assert parse_override("training.maxSteps=100") == (["training", "maxSteps"], 100)
    assert parse_override(r"resources.nodeSelector.example\.com/pool=a100") == (
        ["resources", "nodeSelector", "example.com/pool"],
        "a100",
    )
    with pytest.raises(SubmitError, match=r"write key\.path=value"):
        parse_override("training.maxSteps")


def test_submit_builds_a_valid_job_or_names_the_field():
    manifest = build_manifest(
        "t", "tiny-cpu", IMAGE, ["resources.gpusPerNode=0", "resources.cpu=2"]
    )
    assert manifest["spec"]["resources"] == {"gpusPerNode": 0, "cpu": 2}
    assert manifest["kind"] == "DiffusionTrainingJob"
    with pytest.raises(SubmitError, match=r"spec\.training\.lr"):
        build_manifest("t", "tiny-cpu", IMAGE, ["training.lr=7"])
    with pytest.raises(SubmitError, match="is a value, not a section"):
        build_manifest("t", "tiny-cpu", IMAGE, ["preset.x=1"])


def test_table_row_and_ages():
    now = datetime(2026, 12, 1, 12, 5, 3, tzinfo=UTC)
    row = job_row(FAILED_JOB, with_namespace=True, now=now)
    assert row == [
        "team-a", "sd2", "Running", "120/1000", "0.1235", "812.3", "-", "2", "1", "100", "2h5m",
    ]  # fmt: skip
    assert age_text("2026-12-01T12:04:55Z", now) == "8s"
    assert age_text("2026-11-28T12:04:55Z", now) == "3d0h"


def test_describe_shows_the_failed_attempt_and_its_reason():
    text = describe_text(FAILED_JOB, [{"type": "Warning", "reason": "Restart", "message": "x"}])
    assert "Gang:         4 pod(s) x 8 process(es), 8 GPU(s) per pod" in text
    assert "Last failure: attempt 1: OOMKilled OOMKilled -> Restart, exit code 137" in text
    assert "worker 3 was killed for memory" in text
    assert "Checkpoint:   s3://b/sd2/step-00000100 (step 100)" in text
    assert "Restart   x" in text


def test_completion_offers_commands_then_job_names():
    assert candidates(["de"], []) == ["describe"]
    assert candidates(["logs", "s"], ["sd2", "tiny"]) == ["sd2"]
    assert candidates(["submit", ""], ["sd2"]) == []
