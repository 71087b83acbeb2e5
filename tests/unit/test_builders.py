"""Golden files: the children built for each example job. UPDATE_GOLDEN=1 rewrites them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from diffusion_operator.builders import Owner, build_config_map, build_service
from diffusion_operator.render import render_trainer_config
from diffusion_operator.spec import DiffusionTrainingJobSpec
from diffusion_operator.worker_job import AttemptInputs, build_worker_job

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
GOLDEN = Path(__file__).parent / "golden"


def build_children(example: Path) -> list[dict]:
    body = yaml.safe_load(example.read_text())
    name = body["metadata"]["name"]
    spec = DiffusionTrainingJobSpec.model_validate(body["spec"])
    owner = Owner(name=name, namespace="team-a", uid="00000000-0000-0000-0000-000000000001")
    config = render_trainer_config(spec, name, "team-a", f"/checkpoints/team-a/{name}")
    return [
        build_config_map(owner, config),
        build_service(owner),
        build_worker_job(owner, spec, AttemptInputs(attempt=2, resume_from="/ckpt/step-00000100")),
    ]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_children_match_golden_file(example: Path):
    rendered = yaml.safe_dump_all(build_children(example), sort_keys=True)
    golden = GOLDEN / f"{example.stem}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert golden.exists(), f"no golden file {golden.name}: run with UPDATE_GOLDEN=1"
    assert rendered == golden.read_text()


def worker_pod_of(example: str) -> tuple[dict, dict]:
    _, _, job = build_children(ROOT / "manifests" / "examples" / f"{example}.yaml")
    pod = job["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def test_job_is_an_indexed_gang_without_retries():
    _, _, job = build_children(ROOT / "manifests" / "examples" / "sd2-base-256.yaml")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 8
    assert spec["backoffLimit"] == 0
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert job["metadata"]["name"] == "sd2-base-256-a2"
    assert job["metadata"]["ownerReferences"][0]["controller"] is True


def test_worker_pod_is_restricted_and_tokenless():
    pod, container = worker_pod_of("sd2-base-256")
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}


def test_worker_env_sets_both_torchrun_families():
    _, container = worker_pod_of("sd2-base-256")
    env = {e["name"]: e for e in container["env"]}
    master = "sd2-base-256-a2-0.sd2-base-256-workers.team-a.svc"
    assert env["MASTER_ADDR"]["value"] == env["PET_MASTER_ADDR"]["value"] == master
    assert env["PET_NNODES"]["value"] == "8"
    assert env["PET_NPROC_PER_NODE"]["value"] == "8"
    assert env["WORLD_SIZE"]["value"] == "64"
    index_field = env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert "job-completion-index" in index_field
    assert env["RESUME_FROM"]["value"] == "/ckpt/step-00000100"
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"]["value"] == "1"
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]


def test_user_env_overrides_defaults_and_capabilities_are_opt_in():
    spec = DiffusionTrainingJobSpec.model_validate(
        {
            "image": "trainer:1",
            "env": [{"name": "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC", "value": "60"}],
            "podSecurity": {"addCapabilities": ["IPC_LOCK"]},
        }
    )
    owner = Owner("j", "ns", "uid")
    container = build_worker_job(owner, spec, AttemptInputs(attempt=1))["spec"]["template"]["spec"][
        "containers"
    ][0]
    values = [
        e.get("value") for e in container["env"] if e["name"] == "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC"
    ]
    assert values == ["60"]
    assert container["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]


def test_queue_name_becomes_the_kueue_label():
    _, _, job = build_children(ROOT / "manifests" / "examples" / "sd2-base-512.yaml")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "a100-training"


def test_unquoted_quantities_reach_the_pod_as_strings():
    body = yaml.safe_load((ROOT / "manifests" / "examples" / "tiny-cpu.yaml").read_text())
    body["spec"]["resources"].update(cpu=2, memory=3221225472)
    spec = DiffusionTrainingJobSpec.model_validate(body["spec"])
    owner = Owner(name="q", namespace="team-a", uid="00000000-0000-0000-0000-000000000002")
    job = build_worker_job(owner, spec, AttemptInputs(attempt=1, resume_from=None))
    limits = job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert (limits["cpu"], limits["memory"]) == ("2", "3221225472")
    body["spec"]["resources"]["cpu"] = True  # YAML's `yes`: not a quantity
    with pytest.raises(ValueError, match=r"resources\.cpu"):
        DiffusionTrainingJobSpec.model_validate(body["spec"])
