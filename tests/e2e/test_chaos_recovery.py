"""Chaos with the real trainer (2 pods x 1 torchrun process on the local node): a hung rank,
a SIGTERM during a save that takes longer than torchrun's default 30 s, a torn checkpoint, and
non-finite gradients that need a rollback. Each case checks the phase, counted restarts vs
disruptions, the attempt, the reason, and that the committed checkpoint never goes back."""

from __future__ import annotations

import os
import re
import signal

import pytest
from e2e_harness import local_job_spec
from test_local_training import (
    COMMITTED_LINE,
    RESUMED_LINE,
    committed_steps,
    pod_of_rank,
    rank_log,
    wait_log,
    wait_worker,
)

from testenv.chaos_checks import CheckpointWatch, assert_recovered
from testenv.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.chaos]
STACK_LINE = re.compile(r'File "[^"]+", line \d+,? in \w+')  # a frame: faulthandler or traceback
FAULTHANDLER_STACK = "(most recent call first)"


def chaos_spec(namespace: str, max_steps: int, interval: int, **env: str) -> dict:
    spec = local_job_spec(namespace, max_steps=max_steps, checkpoint_interval=interval)
    spec["env"] = [{"name": name, "value": value} for name, value in env.items()]
    spec["failurePolicy"] = {"maxRestarts": 1, "backoffSeconds": 1}
    return spec


def test_a_hung_rank_dumps_every_rank_stacks_and_the_gang_restarts(
    local_node, operator, dtjs, namespace, data_claim
):
    job = "hang"
    spec = chaos_spec(namespace, 12, 4, DTJ_FAULT_HANG_AT_STEP="6:1", DTJ_FAULT_ATTEMPT="1")
    spec["failurePolicy"]["hangTimeoutSeconds"] = 10
    with CheckpointWatch(dtjs, job):
        dtjs.create(job, spec)
        status = assert_recovered(
            dtjs, job, phase="Succeeded", attempt=2, restarts=1, reason="Hang", timeout_s=420
        )
    assert status["lastFailure"]["class"] == "Hang"
    hung = rank_log(local_node, namespace, job, 1, 1)
    assert "stacks of rank 1 follow" in hung and "hang_for_fault_tests" in hung, hung[-2000:]
    assert FAULTHANDLER_STACK in hung and STACK_LINE.search(hung), hung[-2000:]
    # Its peer's stack is in its log too: its own watchdog's dump, the dump on the restart's
    # SIGTERM, or the traceback of the collective that failed when the hung rank exited.
    peer = rank_log(local_node, namespace, job, 1, 0)
    assert any(header in peer for header in (FAULTHANDLER_STACK, "Traceback (most recent call")), (
        peer[-2000:]
    )
    assert STACK_LINE.search(peer), peer[-2000:]
    assert wait_log(local_node, namespace, job, 2, RESUMED_LINE) == 4


def test_sigterm_during_a_save_longer_than_30s_still_commits_and_resumes(
    local_node, operator, dtjs, namespace, data_claim, shared_volume
):
    job = "slowsave"
    # Only attempt 1's saves are slow: 40 s, past torchrun's default 30 s shutdown timeout.
    spec = chaos_spec(namespace, 40, 1000, DTJ_FAULT_SAVE_DELAY_S="40", DTJ_FAULT_ATTEMPT="1")
    spec["runPolicy"]["terminationGracePeriodSeconds"] = 90
    with CheckpointWatch(dtjs, job):
        dtjs.create(job, spec)
        wait_until(
            lambda: (dtjs.status(job).get("progress") or {}).get("step"), 300, "training steps", 1
        )
        rank1 = pod_of_rank(dtjs, job, 1, rank=1)
        dtjs.core.delete_namespaced_pod(rank1.metadata.name, namespace)  # a drain, plainly
        saved_at = wait_log(local_node, namespace, job, 1, COMMITTED_LINE, timeout_s=120)
        assert saved_at in committed_steps(shared_volume, namespace)
        assert wait_log(local_node, namespace, job, 2, RESUMED_LINE) == saved_at
        status = assert_recovered(
            dtjs, job, phase="Succeeded", attempt=2, restarts=0, disruptions=1, timeout_s=300
        )
    assert status["lastFailure"]["class"] == "Disruption"
    assert status["checkpoint"]["step"] == 40
    assert "holding the commit" in rank_log(local_node, namespace, job, 1)


def test_a_torn_checkpoint_is_never_loaded(
    local_node, operator, dtjs, namespace, data_claim, shared_volume
):
    job = "torn"
    with CheckpointWatch(dtjs, job):
        dtjs.create(job, chaos_spec(namespace, 12, 4))
        wait_until(lambda: 4 in committed_steps(shared_volume, namespace), 300, "step 4", 1)
        # A save that died half way: shards and state, no commit marker, newer than any commit.
        torn = shared_volume / "checkpoints" / namespace / "step-00000099"
        torn.mkdir()
        (torn / "trainer_state.json").write_text('{"step": 99}')
        (torn / "__0_0.distcp").write_bytes(b"\0" * 64)
        rank1 = pod_of_rank(dtjs, job, 1, rank=1)
        os.kill(wait_worker(rank1.metadata.name)["worker"][0], signal.SIGKILL)
        resumed = wait_log(local_node, namespace, job, 2, RESUMED_LINE)
        assert resumed in committed_steps(shared_volume, namespace) and resumed < 99
        assert_recovered(
            dtjs,
            job,
            phase="Succeeded",
            attempt=2,
            restarts=1,
            reason="WorkerFailed",
            timeout_s=300,
        )
    assert committed_steps(shared_volume, namespace)[-1] == 12


def test_non_finite_gradients_roll_back_past_the_bad_batches_and_succeed(
    local_node, operator, dtjs, namespace, data_claim, shared_volume
):
    job = "nan"
    # Steps 9-11 of the first pass read poisoned batches: 3 skips in a row end attempt 1.
    spec = chaos_spec(namespace, 16, 4, DTJ_FAULT_NAN_STEPS="9-11")
    spec["failurePolicy"]["nonFinite"] = {"maxConsecutiveSkips": 3}
    dtjs.create(job, spec)
    # No checkpoint watch here: a rollback goes back to an older checkpoint on purpose.
    status = assert_recovered(
        dtjs, job, phase="Succeeded", attempt=2, restarts=0, reason="NonFinite", timeout_s=420
    )
    assert status["rollbacks"] == 1
    assert status["lastFailure"]["class"] == "NonFinite"
    assert status["rollback"]["skipDataToStep"] >= 11  # where the streak was noticed
    # Attempt 2 went back one checkpoint before the newest (8), to 4, and read past step 11.
    assert wait_log(local_node, namespace, job, 2, RESUMED_LINE) == 4
    attempt2 = rank_log(local_node, namespace, job, 2)
    assert f"DTJ_DATA_SKIP_TO_STEP={status['rollback']['skipDataToStep']}" in attempt2
    assert "fault injection: NaN loss" not in attempt2
    assert committed_steps(shared_volume, namespace)[-1] == 16
    assert status["checkpoint"]["step"] == 16
