"""The local node agent's pure parts: env resolution, hosts files, volumes, logs lookup."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from localnode.logs import list_pod_logs, select_log
from localnode.network import HostsEntry, render_hosts
from localnode.podenv import EnvError, container_argv, expand_references, resolve_env
from localnode.pods import exit_code_of, read_message
from localnode.volumes import Mount, materialise_volumes, quantity_bytes

POD = {
    "metadata": {
        "name": "job-a1-0-x",
        "namespace": "ns",
        "uid": "u-1",
        "labels": {"app": "dtj"},
        "annotations": {"batch.kubernetes.io/job-completion-index": "1"},
    },
    "spec": {"nodeName": "n1"},
    "status": {"podIP": "10.77.0.5"},
}


def secrets(namespace: str, name: str) -> dict[str, str]:
    stored = {("ns", "creds"): {"KEY": base64.b64encode(b"s3cret").decode()}}
    return stored[(namespace, name)]


def test_env_resolves_field_refs_secrets_and_references():
    container = {
        "envFrom": [{"secretRef": {"name": "creds"}, "prefix": "AWS_"}],
        "env": [
            {
                "name": "RANK",
                "valueFrom": {
                    "fieldRef": {
                        "fieldPath": (
                            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
                        )
                    }
                },
            },
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "K", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "KEY"}}},
            {"name": "ADDR", "value": "$(IP):$(PORT)$$(IP)"},
        ],
    }
    env = resolve_env(POD, container, secrets)
    assert env == {
        "AWS_KEY": "s3cret",
        "RANK": "1",
        "IP": "10.77.0.5",
        "APP": "dtj",
        "K": "s3cret",
        "ADDR": "10.77.0.5:$(PORT)$(IP)",
    }


def test_missing_secret_is_an_error_unless_optional():
    container = {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "no", "key": "k"}}}]}
    with pytest.raises(EnvError, match="secret 'no'"):
        resolve_env(POD, container, secrets)
    container["env"][0]["valueFrom"]["secretKeyRef"]["optional"] = True
    assert resolve_env(POD, container, secrets) == {"X": ""}


def test_argv_expands_references_and_needs_a_command():
    assert container_argv({"command": ["torchrun"], "args": ["--x=$(A)"]}, {"A": "1"}) == [
        "torchrun",
        "--x=1",
    ]
    assert expand_references("$(UNKNOWN)", {}) == "$(UNKNOWN)"
    with pytest.raises(EnvError, match="no command"):
        container_argv({"args": ["x"]}, {})


def test_hosts_list_service_names_of_every_peer():
    own = HostsEntry("10.77.0.2", "job-a1-0", "job-workers", "ns")
    peer = HostsEntry("10.77.0.3", "job-a1-1", "job-workers", "ns")
    text = render_hosts(own, [own, peer])
    assert (
        "10.77.0.2\tjob-a1-0.job-workers.ns.svc.cluster.local job-a1-0.job-workers.ns.svc" in text
    )
    assert text.count("job-a1-1.job-workers.ns.svc ") == 1
    assert text.startswith("127.0.0.1\tlocalhost")


def test_volumes_become_mounts(tmp_path):
    pod = {
        "metadata": {"namespace": "ns"},
        "spec": {
            "volumes": [
                {"name": "config", "configMap": {"name": "cm"}},
                {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "claim"}},
                {"name": "token", "projected": {"sources": []}},
            ]
        },
    }
    objects = {
        ("ConfigMap", "ns", "cm"): {"data": {"config.yaml": "a: 1\n"}},
        ("PersistentVolumeClaim", "ns", "claim"): {
            "spec": {"volumeName": "pv"},
            "status": {"phase": "Bound"},
        },
        ("PersistentVolume", "", "pv"): {"spec": {"hostPath": {"path": "/srv/pv"}}},
    }
    container = {
        "volumeMounts": [
            {"name": "data", "mountPath": "/data/sub", "subPath": "x"},
            {"name": "config", "mountPath": "/etc/dtj", "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "token", "mountPath": "/var/run/secrets"},
        ]
    }
    mounts = materialise_volumes(pod, container, tmp_path, lambda *key: objects[key])
    assert mounts == [  # the token is skipped: local pods get no API credentials
        Mount("/data/sub", "/srv/pv/x", None, False),
        Mount("/etc/dtj", str(tmp_path / "config"), None, True),
        Mount("/dev/shm", "", 256 * 2**20, False),
    ]
    assert (tmp_path / "config" / "config.yaml").read_text() == "a: 1\n"
    assert quantity_bytes("2Gi") == 2 * 2**30


def test_exit_codes_and_termination_message(tmp_path):
    assert exit_code_of(-15) == 143
    assert exit_code_of(3) == 3
    log = tmp_path / "trainer.log"
    log.write_text("line\n" * 100 + "boom\n")
    missing = tmp_path / "termination-log"
    assert read_message(missing, log, 1, "FallbackToLogsOnError").endswith("boom")
    assert read_message(missing, log, 0, "FallbackToLogsOnError") == ""
    missing.write_text('{"status":"completed"}')
    assert read_message(missing, log, 1, "FallbackToLogsOnError") == '{"status":"completed"}'


def test_logs_select_rank_and_latest_attempt(tmp_path):
    for attempt, rank in ((1, 0), (2, 0), (2, 1)):
        pod_dir = tmp_path / "pods" / f"ns_job-a{attempt}-{rank}"
        pod_dir.mkdir(parents=True)
        meta = {
            "name": f"job-a{attempt}-{rank}",
            "namespace": "ns",
            "labels": {"diffusion.dev/job-name": "job", "diffusion.dev/attempt": str(attempt)},
            "annotations": {"batch.kubernetes.io/job-completion-index": str(rank)},
        }
        (pod_dir / "pod.json").write_text(json.dumps(meta))
        (pod_dir / "trainer.log").write_text(f"attempt {attempt} rank {rank}")
    logs = list_pod_logs(tmp_path, "job", "ns")
    latest_rank1 = select_log(logs, rank=1, attempt=None)
    assert latest_rank1 is not None
    assert Path(latest_rank1.path).read_text() == "attempt 2 rank 1"
    first = select_log(logs, rank=0, attempt=1)
    assert first is not None and first.path.read_text() == "attempt 1 rank 0"
    assert select_log(logs, rank=1, attempt=1) is None


def test_a_checkout_under_a_volume_is_bound_back_on_top():
    from localnode.pods import keep_visible
    from localnode.volumes import Mount

    mounts = [Mount(target="/tmp"), Mount(target="/etc/dtj", source="/state/config")]
    extra = keep_visible(mounts, [Path("/tmp/ci-clone"), Path("/tmp/ci-clone/.venv")])
    assert extra == [Mount(target="/tmp/ci-clone", source="/tmp/ci-clone", read_only=True)]
    assert keep_visible(mounts, [Path("/work/main")]) == []
