"""The whole system on one machine: operator -> Indexed Job -> scheduler -> local node agent ->
torchrun with 2 nodes, with real checkpoints, failures and restarts."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from e2e_harness import local_job_spec, pids_with_env

from localnode.logs import list_pod_logs, select_log
from testenv.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
STEP_LINE = re.compile(r"step=(\d+)/\d+ loss=([0-9.]+)")
RESUMED_LINE = re.compile(r"resumed from \S+ at step (\d+)")
COMMITTED_LINE = re.compile(r"checkpoint step (\d+) committed")
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def rank_log(local_node, namespace: str, job: str, attempt: int, rank: int = 0) -> str:
    entry = select_log(list_pod_logs(local_node.state_dir, job, namespace), rank, attempt)
    return entry.path.read_text(errors="replace") if entry else ""


def committed_steps(volume: Path, namespace: str) -> list[int]:
    root = volume / "checkpoints" / namespace
    return sorted(
        int(step_dir.name.removeprefix("step-"))
        for step_dir in root.glob("step-*")
        if (step_dir / ".committed").exists()
    )


def pod_of_rank(dtjs, job: str, attempt: int, rank: int):
    pods = dtjs.running_pods(job, attempt, 2, timeout_s=240)
    return next(p for p in pods if p.metadata.annotations[COMPLETION_INDEX] == str(rank))


def pod_processes(pod_name: str) -> dict[str, list[int]]:
    """{'torchrun': [...], 'worker': [...]} of one local pod."""
    found: dict[str, list[int]] = {"torchrun": [], "worker": []}
    for pid in pids_with_env(f"POD_NAME={pod_name}"):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "torchrun" in cmdline:
            found["torchrun"].append(pid)
        elif "diffusion_trainer" in cmdline:
            found["worker"].append(pid)
    return found


def wait_worker(pod_name: str) -> dict[str, list[int]]:
    return wait_until(
        lambda: (procs := pod_processes(pod_name))["worker"] and procs["torchrun"] and procs,
        timeout_s=60,
        what=f"torchrun and its trainer worker in {pod_name}",
    )


def wait_log(local_node, namespace, job, attempt, pattern: re.Pattern, timeout_s=240) -> int:
    """The first integer group of the last match of pattern in rank 0's log of attempt."""
    return int(
        wait_until(
            lambda: pattern.findall(rank_log(local_node, namespace, job, attempt))[-1:],
            timeout_s=timeout_s,
            what=f"{pattern.pattern!r} in {job} attempt {attempt} rank 0",
            interval_s=1,
        )[0]
    )


def test_tiny_job_trains_recovers_from_sigterm_and_kill_and_succeeds(
    local_node, operator, dtjs, namespace, data_claim, shared_volume
):
    job = "tiny"
    dtjs.create(job, local_job_spec(namespace, max_steps=40))

    # Attempt 1: after the first periodic checkpoint, SIGTERM rank 1 as a node drain would.
    wait_until(
        lambda: 10 in committed_steps(shared_volume, namespace), 300, "checkpoint step 10", 1
    )
    # The operator reads rank 0's /progress over the pod network while the gang runs.
    progress = wait_until(
        lambda: (dtjs.status(job).get("progress") or {}).get("step"), 60, "status.progress", 1
    )
    assert progress >= 10
    rank1 = pod_of_rank(dtjs, job, 1, rank=1)
    os.kill(wait_worker(rank1.metadata.name)["torchrun"][0], signal.SIGTERM)
    wait_until(
        lambda: '"status":"preempted"' in rank_log(local_node, namespace, job, 1),
        timeout_s=60,
        what="rank 0 of attempt 1 stops on the preemption",
    )
    emergency_step = max(map(int, COMMITTED_LINE.findall(rank_log(local_node, namespace, job, 1))))
    assert emergency_step >= 10
    assert emergency_step in committed_steps(shared_volume, namespace)

    # Attempt 2 resumes from the emergency checkpoint; then a worker is killed outright.
    assert wait_log(local_node, namespace, job, 2, RESUMED_LINE) == emergency_step
    wait_until(
        lambda: max(committed_steps(shared_volume, namespace)) > emergency_step,
        timeout_s=120,
        what="a checkpoint of attempt 2",
        interval_s=1,
    )
    rank1 = pod_of_rank(dtjs, job, 2, rank=1)
    os.kill(wait_worker(rank1.metadata.name)["worker"][0], signal.SIGKILL)

    # Attempt 3 resumes from the last committed checkpoint and finishes.
    resumed_at = wait_log(local_node, namespace, job, 3, RESUMED_LINE)
    assert emergency_step < resumed_at == max_committed_before(shared_volume, namespace, 40)
    dtjs.wait_phase(job, "Succeeded", timeout_s=300)

    status = dtjs.status(job)
    assert status["attempt"] == 3
    assert committed_steps(shared_volume, namespace)[-1] == 40
    assert_loss_falls(
        rank_log(local_node, namespace, job, 1), rank_log(local_node, namespace, job, 3)
    )
    assert_export_loads(shared_volume / "checkpoints" / namespace / "export" / "step-00000040")


def max_committed_before(volume: Path, namespace: str, final_step: int) -> int:
    return max(step for step in committed_steps(volume, namespace) if step < final_step)


def assert_loss_falls(first_log: str, last_log: str) -> None:
    first = [float(loss) for _, loss in STEP_LINE.findall(first_log)]
    last = [float(loss) for _, loss in STEP_LINE.findall(last_log)]
    assert first and last, "no step lines in the rank 0 logs"
    assert last[-1] < first[0], f"loss did not fall: first {first}, last {last}"


def assert_export_loads(folder: Path) -> None:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"))
    assert sum(p.numel() for p in unet.parameters()) > 0


def test_deleting_the_job_mid_run_kills_every_local_process(
    local_node, operator, dtjs, namespace, data_claim
):
    job = "doomed"
    dtjs.create(job, local_job_spec(namespace, max_steps=10_000))
    pods = dtjs.running_pods(job, 1, 2, timeout_s=120)
    pids = [
        pid for pod in pods for group in wait_worker(pod.metadata.name).values() for pid in group
    ]
    netns_before = local_node.netns()
    assert len(netns_before) >= 2

    dtjs.delete(job)
    wait_until(lambda: not dtjs.pods(job), 90, f"pods of {job} deleted", 1)
    alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert alive == [], f"processes outlived their pods: {alive}"
    assert not set(netns_before) & set(local_node.netns())
    assert local_node.processes() == []
