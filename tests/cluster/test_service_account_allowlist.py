"""Which ServiceAccount a job's workers run as is the cluster admin's choice: a job naming one
outside the operator's allowlist fails before any pod exists, saying how to allow it; the listed
one runs; a job naming none runs as the namespace's default."""

from __future__ import annotations

import pytest

from testenv.waiting import wait_until

pytestmark = pytest.mark.cluster


def test_a_service_account_outside_the_allowlist_is_refused(
    run_operator, monkeypatch, dtjs, make_gpu_pool, job_spec
):
    monkeypatch.setenv("DTJ_OPERATOR_ALLOWED_SERVICE_ACCOUNTS", "trainer-worker")
    run_operator()
    pool = make_gpu_pool(num_nodes=1)
    dtjs.create("sneaky", job_spec(pool, nodes=1, serviceAccountName="cluster-admin-sa"))
    dtjs.create("listed", job_spec(pool, nodes=1, serviceAccountName="trainer-worker"))
    dtjs.create("unnamed", job_spec(pool, nodes=1))

    status = dtjs.wait_phase("sneaky", "Failed")
    message = dtjs.condition("sneaky", "Failed")["message"]
    assert "spec.serviceAccountName 'cluster-admin-sa' is not allowed" in message, status
    assert "workerServiceAccount.allowed" in message
    assert dtjs.jobs("sneaky") == []  # refused before any worker was created
    for name in ("listed", "unnamed"):
        wait_until(lambda n=name: dtjs.jobs(n), 60, f"{name}'s attempt")
