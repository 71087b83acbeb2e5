"""The images, built here (tools/images/build.sh: podman and Debian-made base images where Docker
is absent), run as restricted containers: read-only root filesystem, uid 1000, no capabilities.
The operator, with nothing but the chart's ServiceAccount token, leads, reconciles a job on a
fake pool to Succeeded and is never refused; the trainer trains the documented first job with
/tmp as its only writable path and no network."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from chart_tools import ROOT
from test_chart_install import (
    FORBIDDEN,
    job_spec,
    lease_of,
    operator_settings,
    responds_ok,
    restrict,
    run_job_to_success,
)

from testenv.ports import free_port
from testenv.waiting import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
PODMAN = ROOT / "tools" / "images" / "podman.sh"
CONFIG_DIR = "/etc/dtj-operator"


@pytest.fixture(scope="session")
def operator_image(built_images) -> str:
    return built_images["operator"]


@pytest.fixture(scope="session")
def trainer_image(built_images) -> str:
    return built_images["trainer"]


def podman(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PODMAN), *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )


@contextmanager
def operator_container(image: str, kubeconfig: Path, release, log_path: Path) -> Iterator[str]:
    """The image's own entrypoint (`dtj operator`), configured as the chart configures it."""
    name = f"dtj-operator-{uuid.uuid4().hex[:6]}"
    port = free_port()
    settings = {
        **operator_settings(release, f"{CONFIG_DIR}/kubeconfig", port),
        "DTJ_OPERATOR_METRICS_PORT": "0",  # the host's network: no fixed port
    }
    started = podman(
        "run", "--detach", "--name", name, "--network", "host", "--read-only",
        "--user", "1000:1000", "--cap-drop", "all", "--security-opt", "no-new-privileges",
        "--tmpfs", "/tmp", "--volume", f"{kubeconfig.parent}:{CONFIG_DIR}:ro",
        *[f"--env={key}={value}" for key, value in settings.items()], image,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        wait_until(lambda: responds_ok(port, "/readyz"), 120, "the operator container's /readyz")
        yield name
    finally:
        podman("stop", "--time", "30", name)
        log_path.write_text(podman("logs", name).stdout + podman("logs", name).stderr)
        podman("rm", "--force", name)


def test_operator_image_reconciles_a_job_as_a_restricted_container(
    operator_image, install_chart, token_kubeconfig, test_namespace, make_gpu_pool, tmp_path
):
    restrict(test_namespace)
    release = install_chart()
    # Readable by the container's uid 1000: its own directory, nothing else in it.
    config_dir = tmp_path / "operator-config"
    config_dir.mkdir(mode=0o755)
    kubeconfig = token_kubeconfig(release).rename(config_dir / "kubeconfig")
    kubeconfig.chmod(0o644)
    pool = make_gpu_pool(num_nodes=2)
    spec = job_spec(
        pool.node_selector, pool.tolerations, serviceAccountName=release.worker_service_account
    )
    log_path = tmp_path / "operator.log"
    with operator_container(operator_image, kubeconfig, release, log_path) as name:
        user = podman("exec", name, "id", "-u").stdout.strip()
        assert user == "1000"
        probe = podman("exec", name, "touch", "/opt/venv/probe")
        assert probe.returncode != 0 and "Read-only file system" in probe.stderr
        assert lease_of(test_namespace, release).spec.holder_identity
        run_job_to_success(test_namespace, spec, release)
    denied = [line for line in log_path.read_text().splitlines() if FORBIDDEN.search(line)]
    assert not denied, "\n".join(denied[:4])


def first_job_config(max_steps: int) -> str:
    """The trainer config the operator renders for manifests/examples/tiny-cpu.yaml."""
    from diffusion_operator.render import render_trainer_config
    from diffusion_operator.spec import DiffusionTrainingJobSpec
    from diffusion_trainer.config import dump_config

    example = yaml.safe_load((ROOT / "manifests" / "examples" / "tiny-cpu.yaml").read_text())
    spec = DiffusionTrainingJobSpec.model_validate(example["spec"])
    config = render_trainer_config(spec, "tiny-cpu", "default", "/tmp/checkpoints")
    config.training.max_steps = max_steps
    return dump_config(config)


def test_trainer_image_trains_the_first_job_read_only_without_network(trainer_image, tmp_path):
    config_dir = tmp_path / "config"
    config_dir.mkdir(mode=0o755)
    config_file = config_dir / "config.yaml"
    config_file.write_text(first_job_config(max_steps=4))
    config_file.chmod(0o644)
    run = podman(
        "run", "--rm", "--network", "none", "--read-only", "--user", "1000:1000",
        "--cap-drop", "all", "--security-opt", "no-new-privileges", "--tmpfs", "/tmp",
        "--shm-size", "512m", "--volume", f"{config_dir}:/etc/dtj:ro", trainer_image,
        "--standalone", "--nproc-per-node=2", "-m", "diffusion_trainer",
        "--config", "/etc/dtj/config.yaml",
        timeout_s=900,
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert "synthesized 128 samples in /tmp/dtj-synthetic" in output
    assert "step=4/4" in output
    assert "checkpoint step 4 committed at /tmp/dtj-checkpoints/tiny-cpu/step-00000004" in output
