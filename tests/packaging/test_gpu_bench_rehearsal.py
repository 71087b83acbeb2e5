"""`make bench-gpu` rehearsed on CPU: the same script, in a Python 3.12 environment shaped like
the GPU machine's (torch 2.11, numpy 2.5, transformers 5; tools/gpu/machine-requirements.txt),
with only the staged wheels added and no registry used, so the one GPU call works first time."""

from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bench.bench_plan import TINY_PLAN

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / ".wheels" / "gpu"
CARRY_LIMIT_BYTES = 64 * 2**20  # what travels with the repository to the GPU machine

pytestmark = pytest.mark.slow


def run_script(*command: str, env: dict[str, str] | None = None, timeout_s: float = 900) -> str:
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout


@pytest.fixture(scope="module")
def staged_wheels() -> Path:
    run_script("tools/gpu/stage_wheels.sh")
    return WHEELS


@pytest.fixture(scope="module")
def rehearsal(staged_wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    python = run_script("tools/gpu/rehearsal_env.sh").strip()
    out = tmp_path_factory.mktemp("bench-gpu")
    site = tmp_path_factory.mktemp("site")
    # No pip, no index: a registry lookup would fail loudly rather than be quietly used.
    env = {
        "PYTHON": python,
        "OUT": str(out),
        "DTJ_BENCH_SITE": str(site),
        "PIP_NO_INDEX": "1",
        "UV_OFFLINE": "1",
        "PYTHONPATH": "",
    }
    run_script("tools/gpu/bench_gpu.sh", "--tiny", env=env)
    return out


def test_staged_wheels_fit_what_travels(staged_wheels: Path) -> None:
    listed = [
        line for line in (ROOT / "tools/gpu/staged-wheels.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]  # fmt: skip
    wheels = list(staged_wheels.glob("*.whl"))
    assert len(wheels) == len(listed)
    assert sum(wheel.stat().st_size for wheel in wheels) < CARRY_LIMIT_BYTES // 2


def test_it_ran_in_the_gpu_shaped_environment(rehearsal: Path) -> None:
    environment = (rehearsal / "environment.txt").read_text()
    assert "python 3.12" in environment
    assert "torch 2.11" in environment


def test_the_gpu_tests_were_collected_and_skipped_without_a_gpu(rehearsal: Path) -> None:
    suite = ET.parse(rehearsal / "gpu-tests.xml").getroot().find("testsuite")
    assert suite is not None
    assert int(suite.get("tests", 0)) >= 3
    assert int(suite.get("skipped", 0)) == int(suite.get("tests", 0))
    assert suite.get("errors") == "0" and suite.get("failures") == "0"


def test_every_row_measured_both_steps(rehearsal: Path) -> None:
    bench = json.loads((rehearsal / "train_step_bench.json").read_text())
    assert bench["machine"]["torch"].startswith("2.11")
    rows = bench["rows"]
    assert [(r["res"], r["micro_batch"], r["accumulation"], r["variant"]) for r in rows] == [
        (case.res, case.micro_batch, case.accumulation, case.variant) for case in TINY_PLAN
    ]
    for row in rows:
        for side in ("stock", "ours"):
            assert row[side]["img_s"] > 0, row
        assert row["ours"]["loader_samples_per_s_per_core"] > 0
    table = (rehearsal / "train_step_bench.md").read_text()
    assert table.count("\n| 256 |") == len(TINY_PLAN)


def test_loader_and_projection_reports(rehearsal: Path) -> None:
    loader = json.loads((rehearsal / "loader_bench.json").read_text())
    assert {(row["path"], row["res"]) for row in loader} == {
        ("latents", 256), ("latents", 512), ("raw jpeg", 256), ("raw jpeg", 512)
    }  # fmt: skip
    assert all(row["cores_for_8_gpus"] >= 1 for row in loader)
    projection = json.loads((rehearsal / "scaling_projection.json").read_text())
    assert {row["num_gpus"] for row in projection["rows"]} == {8, 64, 128}
