"""Bad configs fail fast: exit code 2, a message naming the field, no torch, no process group."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from trainer_harness import REPO_ROOT, child_env, run_python_probe

from testenv.ports import free_port

CONFIG_ERROR = 2


def run_cli(
    config: dict[str, Any] | str, tmp_path: Path, **env: str
) -> subprocess.CompletedProcess:
    path = tmp_path / "config.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return run_command([sys.executable, "-m", "diffusion_trainer", "--config", str(path)], **env)


def run_command(
    command: list[str], timeout_s: float = 60, **env: str
) -> subprocess.CompletedProcess:
    """A trainer process from the repository root, output captured, never raising."""
    return subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=child_env(**env),
        timeout=timeout_s,
    )


def tiny_config(data_dir: Path, **training: Any) -> dict[str, Any]:
    return {
        "model": {"unet": "tiny"},
        "data": {"train": {"local": str(data_dir), "resolution": 64}},
        "training": {"globalBatchSize": 8, "microBatchSize": 4, **training},
    }


@pytest.fixture
def mds_dir(tmp_path: Path) -> Path:
    """Just enough of an MDS dataset for the preflight check (an index.json)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "index.json").write_text('{"version": 2, "shards": []}')
    return tmp_path / "data"


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"training": {"microBatchSiz": 4}}, "training.microBatchSiz"),
        ({"training": {"lr": -1}}, "training.lr"),
        ({"model": {"predictionType": "sample"}}, "model.predictionType"),
        ({"training": {"globalBatchSize": 4, "microBatchSize": 8}}, "microBatchSize"),
        ({"model": {"unet": "sd3"}}, "model.unet"),
        ({"data": {"train": {"local": "/nonexistent/dtj"}}}, "data.train.local"),
        (
            {
                "data": {
                    "train": {
                        "local": "/nonexistent",
                        "remote": "s3://b/d",
                        "precomputedLatents": False,
                    }
                }
            },
            "model.vae",
        ),
        ({"training": {"globalBatchSize": 10, "microBatchSize": 4}}, "globalBatchSize"),
        ({"model": {"zeroTerminalSnr": True}}, "model.predictionType: v_prediction"),
        ({"eval": {"intervalSteps": 10}}, "data.eval"),
        ({"eval": {"guidanceScales": [0.5]}}, "eval.guidanceScales"),
    ],
)
def test_bad_config_exits_2_naming_the_field(
    tmp_path: Path, config: dict[str, Any], field: str
) -> None:
    result = run_cli(config, tmp_path)
    assert result.returncode == CONFIG_ERROR, result.stderr
    assert "config error" in result.stderr
    assert field in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("eval_section", "field"),
    [
        ({}, "data.eval.local"),
        ({"clipModel": "/nonexistent/clip"}, "eval.clipModel"),
        ({"fidFeatureExtractor": "/nonexistent/inception.pth"}, "eval.fidFeatureExtractor"),
    ],
)
def test_missing_eval_inputs_fail_at_start_not_at_the_first_evaluation(
    tmp_path: Path, mds_dir: Path, eval_section: dict[str, Any], field: str
) -> None:
    config = tiny_config(mds_dir)
    config["model"]["vae"] = "stabilityai/stable-diffusion-2-base"
    eval_data = tmp_path / "eval-data"
    if eval_section:  # a valid eval set of its own: each dataset needs its own cache
        eval_data.mkdir()
        shutil.copy(mds_dir / "index.json", eval_data)
    config["data"]["eval"] = {"local": str(eval_data)}
    config["eval"] = {"intervalSteps": 10, **eval_section}
    result = run_cli(config, tmp_path)
    assert result.returncode == CONFIG_ERROR, result.stderr
    assert field in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    result = run_cli("training: [unclosed", tmp_path)
    assert result.returncode == CONFIG_ERROR
    assert "not valid YAML" in result.stderr
    missing = run_command(
        [sys.executable, "-m", "diffusion_trainer", "--config", str(tmp_path / "none.yaml")]
    )
    assert missing.returncode == CONFIG_ERROR
    assert "cannot read trainer config" in missing.stderr


def test_checkpoint_uri_without_backend(tmp_path: Path, mds_dir: Path) -> None:
    config = dict(tiny_config(mds_dir), checkpoint={"uri": "nosuchfs://bucket/ckpt"})
    result = run_cli(config, tmp_path)
    assert result.returncode == CONFIG_ERROR
    assert "checkpoint.uri" in result.stderr and "nosuchfs" in result.stderr


def test_object_storage_backends_are_installed(tmp_path: Path, mds_dir: Path) -> None:
    """The `cloud` extra (in the trainer image): s3:// and gs:// pass the backend check."""
    for uri in ("s3://bucket/ckpt", "gs://bucket/ckpt"):
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(dict(tiny_config(mds_dir), checkpoint={"uri": uri})))
        command = [sys.executable, "-m", "diffusion_trainer", "--config", str(path), "--check"]
        result = run_command(command)
        assert result.returncode == 0, result.stderr


def test_operator_env_overrides_run_info(tmp_path: Path, mds_dir: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(mds_dir)))
    env = child_env(DTJ_JOB_NAME="sd2", DTJ_NAMESPACE="ml", DTJ_ATTEMPT="3")
    result = subprocess.run(
        [sys.executable, "-m", "diffusion_trainer", "--config", str(path), "--check"],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    run = yaml.safe_load(result.stdout)["run"]
    assert run == {"jobName": "sd2", "namespace": "ml", "attempt": 3}
    bad = run_cli(tiny_config(mds_dir), tmp_path, DTJ_ATTEMPT="zero")
    assert bad.returncode == CONFIG_ERROR
    assert "DTJ_ATTEMPT" in bad.stderr


def test_config_errors_need_no_torch(tmp_path: Path) -> None:
    """The check runs before torch is even imported, so no process group can exist yet."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"training": {"bogus": 1}}))
    probe = (
        "import sys\nfrom diffusion_trainer.cli import main\n"
        f"code = main(['--config', {str(path)!r}])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(code)\n"
    )
    result = run_python_probe(probe)
    assert result.returncode == CONFIG_ERROR, result.stderr
    assert "training.bogus" in result.stderr


@pytest.mark.slow
def test_indivisible_batch_under_torchrun_fails_before_process_group(
    tmp_path: Path, mds_dir: Path
) -> None:
    """8 images per step cannot be split into micro-batches of 4 over 3 processes."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(mds_dir)))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "3",
        "--master-port",
        str(free_port()),
        "-m",
        "diffusion_trainer",
        "--config",
        str(path),
    ]
    result = run_command(command, timeout_s=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    # Each rank checks on its own (torchrun may stop the others once the first one exits).
    assert "training.globalBatchSize=8 is not divisible" in output
    assert "microBatchSize x world size = 4 x 3" in output
    assert "init_process_group" not in output


def test_config_errors_leave_a_summary_for_the_operator(tmp_path: Path) -> None:
    termination_log = tmp_path / "termination-log"
    result = run_cli({"training": {"lr": -1}}, tmp_path, DTJ_TERMINATION_LOG=str(termination_log))
    assert result.returncode == CONFIG_ERROR
    summary = json.loads(termination_log.read_text())
    assert summary["failureClass"] == "ConfigError"
    assert summary["exitCode"] == CONFIG_ERROR
    assert "training.lr" in summary["message"]
    assert summary["lastCheckpointStep"] is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DTJ_MAX_NONFINITE_SKIPS", "many"),
        ("DTJ_ROLLBACK_CHECKPOINTS", "0"),
        ("DTJ_HANG_TIMEOUT_S", "-5"),
        ("DTJ_FAULT_NAN_STEPS", "nine"),
    ],
)
def test_bad_fault_tolerance_variables_are_config_errors(
    tmp_path: Path, mds_dir: Path, name: str, value: str
) -> None:
    result = run_cli(tiny_config(mds_dir), tmp_path, **{name: value})
    assert result.returncode == CONFIG_ERROR
    assert f"config error: {name}=" in result.stderr
