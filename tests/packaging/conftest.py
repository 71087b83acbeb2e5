"""Packaging fixtures: the helm binary, chart rendering, and chart installs on the control plane."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_tools import (
    CHART_DIR,
    CRD_NAME,
    KUBE_VERSION,
    ROOT,
    UNSCHEDULABLE,
    Release,
    run_tool,
    set_flags,
)


@pytest.fixture(scope="session")
def render(helm) -> Callable[..., list[dict[str, Any]]]:
    """render(values, *helm_args, chart=CHART_DIR) -> the rendered objects (release "rel" in
    namespace "ops")."""

    def render_chart(
        values: dict[str, str] | None = None, *helm_args: str, chart: Path = CHART_DIR
    ) -> list[dict[str, Any]]:
        result = run_tool(
            helm, "template", "rel", chart, "--namespace=ops", f"--kube-version={KUBE_VERSION}",
            *set_flags(values or {}), *helm_args,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    return render_chart


@pytest.fixture(scope="session")
def crd(control_plane) -> None:
    control_plane.kubectl("apply", "--server-side", "-f", str(ROOT / "manifests" / "crd.yaml"))
    control_plane.wait_established(f"crd/{CRD_NAME}")


@pytest.fixture
def install_chart(helm, control_plane, crd, namespace) -> Iterator[Callable[..., Release]]:
    """install_chart(values) -> a Release in the test's namespace. Uninstalled after the test,
    before the namespace goes, so that cluster-scoped RBAC goes too."""
    releases: list[Release] = []
    kubeconfig = f"--kubeconfig={control_plane.kubeconfig}"

    def install(values: dict[str, str] | None = None) -> Release:
        name = f"op-{uuid.uuid4().hex[:6]}"
        flags = set_flags({**UNSCHEDULABLE, **(values or {})})
        result = run_tool(
            helm, "install", name, CHART_DIR, f"--namespace={namespace}", "--skip-crds",
            kubeconfig, *flags,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        releases.append(Release(name, namespace, result.stdout))
        return releases[-1]

    yield install
    for release in releases:
        run_tool(helm, "uninstall", release.name, f"--namespace={namespace}", kubeconfig, "--wait")


@pytest.fixture
def can_i(control_plane) -> Callable[..., bool]:
    """can_i(identity, verb, resource, *scope) via `kubectl auth can-i --as`; scope is
    ("-n", namespace) or ("--all-namespaces",)."""

    def ask(identity: str, verb: str, resource: str, *scope: str) -> bool:
        result = run_tool(
            control_plane.bin_dir / "kubectl", f"--kubeconfig={control_plane.kubeconfig}",
            "auth", "can-i", verb, resource, f"--as={identity}", *scope,
        )  # fmt: skip
        answer = result.stdout.strip()
        assert answer in ("yes", "no"), result.stderr
        return answer == "yes"

    return ask


@pytest.fixture
def token_kubeconfig(control_plane, tmp_path) -> Callable[[Release], Path]:
    """token_kubeconfig(release) -> a kubeconfig whose only credential is a fresh token of the
    release's ServiceAccount (server and CA as in the admin kubeconfig)."""

    def write(release: Release) -> Path:
        token = control_plane.kubectl(
            "create", "token", release.service_account, "-n", release.namespace, "--duration=1h"
        ).strip()
        cluster = yaml.safe_load(control_plane.kubeconfig.read_text())["clusters"][0]
        user = release.service_account
        context = {"cluster": cluster["name"], "user": user, "namespace": release.namespace}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [cluster],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "operator", "context": context}],
            "current-context": "operator",
        }
        path = tmp_path / "operator.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


@dataclass(frozen=True)
class TestNamespace:
    """The test's namespace and typed API clients (admin credentials: the test's own)."""

    name: str
    core: Any
    batch: Any
    custom: Any


@pytest.fixture
def test_namespace(api_client, core_api, batch_api, namespace) -> TestNamespace:
    from kubernetes import client

    return TestNamespace(namespace, core_api, batch_api, client.CustomObjectsApi(api_client))
