"""The chart's optional worker NetworkPolicy, judged by what it allows: the rendered policies go
to cyclonus (the NetworkPolicy evaluator that became SIG Network's policy-assistant), which says
for each connection (source pod, destination pod, port) whether Kubernetes' NetworkPolicy
semantics let it through. Offline: no cluster, no CNI."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chart_tools import CHART_DIR, KUBE_VERSION, ROOT, run_tool

RELEASE_NAMESPACE = "ops"  # the `render` fixture's
OPERATOR_POD = {
    "app.kubernetes.io/name": "diffusion-operator",
    "app.kubernetes.io/instance": "rel",
    "app.kubernetes.io/component": "operator",
}
# The chart's `helm test` pod carries the chart's labels, not the operator's component.
CHART_TEST_POD = {
    "app.kubernetes.io/name": "diffusion-operator",
    "app.kubernetes.io/instance": "rel",
}
PROMETHEUS_POD = {"app.kubernetes.io/name": "prometheus", "prometheus": "k8s"}
OTHER_POD = {"app": "notebook"}
RENDEZVOUS = (29500, "rendezvous")  # diffusion_operator.constants: the container ports
METRICS = (9400, "metrics")
EPHEMERAL = (41873, "")  # NCCL, gloo and c10d's store connections
WATCHED = {"rbac.watchNamespaces": "{team-a}", "networkPolicy.enabled": "true"}


def worker(job: str = "sd2") -> dict[str, str]:
    """A worker pod's labels, as diffusion_operator.worker_job builds them."""
    return {
        "app.kubernetes.io/managed-by": "diffusion-operator",
        "diffusion.dev/role": "worker",
        "diffusion.dev/job-name": job,
        "diffusion.dev/attempt": "1",
        "diffusion.dev/job-uid": "00000000-0000-0000-0000-000000000001",
    }


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str]
    namespace_labels: dict[str, str] = field(default_factory=dict)

    def peer(self, ip: str) -> dict[str, Any]:
        namespace_labels = {"kubernetes.io/metadata.name": self.namespace, **self.namespace_labels}
        return {
            "Internal": {
                "Namespace": self.namespace,
                "NamespaceLabels": namespace_labels,
                "PodLabels": self.labels,
            },
            "IP": ip,
        }


@pytest.fixture(scope="session")
def cyclonus() -> Path:
    result = subprocess.run(
        [str(ROOT / "tools" / "testenv" / "build.sh"), "cyclonus"],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    path = Path(result.stdout.strip().splitlines()[-1]) / "cyclonus"
    assert path.is_file(), f"{path} is missing: tools/testenv/build.sh cyclonus builds it"
    return path


def policies(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == "NetworkPolicy"]


@pytest.fixture
def allowed(cyclonus, tmp_path):
    """allowed(policies, [(source Pod, destination Pod or IP, (port, name))...]) -> one bool
    per connection, from cyclonus's query-traffic analysis."""

    def evaluate(
        objects: list[dict[str, Any]], connections: list[tuple[Pod, Pod | str, tuple[int, str]]]
    ) -> list[bool]:
        call_dir = Path(tempfile.mkdtemp(dir=tmp_path))
        policy_dir = call_dir / "policies"
        policy_dir.mkdir()
        for i, policy in enumerate(objects):
            (policy_dir / f"{i}.yaml").write_text(yaml.safe_dump(policy))
        traffic = []
        for i, (source, destination, (port, name)) in enumerate(connections):
            traffic.append(
                {
                    "Source": source.peer(f"10.0.0.{i + 1}"),
                    "Destination": (
                        {"IP": destination}
                        if isinstance(destination, str)
                        else destination.peer(f"10.1.0.{i + 1}")
                    ),
                    "Protocol": "TCP",
                    "ResolvedPort": port,
                    "ResolvedPortName": name,
                }
            )
        traffic_file = call_dir / "traffic.json"
        traffic_file.write_text(json.dumps(traffic))
        result = run_tool(
            cyclonus, "analyze", "--mode=query-traffic", f"--policy-path={policy_dir}",
            f"--traffic-path={traffic_file}", timeout_s=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        verdicts = re.findall(r"\|\s*IS ALLOWED\?\s*\|\s*(TRUE|FALSE)\s*\|", result.stdout)
        assert len(verdicts) == len(connections), result.stdout
        return [v == "TRUE" for v in verdicts]

    return evaluate


def test_disabled_by_default_renders_no_policy(render):
    assert policies(render()) == []
    assert policies(render({"rbac.watchNamespaces": "{team-a}"})) == []
    assert policies(render({"rbac.scope": "cluster"})) == []


def test_one_valid_policy_per_watched_namespace_selecting_the_workers(render):
    rendered = policies(render(WATCHED))
    assert sorted(p["metadata"]["namespace"] for p in rendered) == [RELEASE_NAMESPACE, "team-a"]
    for policy in rendered:
        kubernetes_validate.validate(policy, KUBE_VERSION, strict=True)
        assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress stays open
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert selector.items() <= worker().items()


def test_cluster_scope_puts_it_in_the_release_namespace_and_the_listed_ones(render):
    values = {"rbac.scope": "cluster", "networkPolicy.enabled": "true"}
    assert [p["metadata"]["namespace"] for p in policies(render(values))] == [RELEASE_NAMESPACE]
    listed = {**values, "networkPolicy.namespaces": "{team-a,team-b}"}
    namespaces = [p["metadata"]["namespace"] for p in policies(render(listed))]
    assert namespaces == [RELEASE_NAMESPACE, "team-a", "team-b"]


@pytest.mark.parametrize("namespace", [RELEASE_NAMESPACE, "team-a"])
def test_workers_take_ingress_only_from_their_peers_the_operator_and_prometheus(
    render, allowed, namespace
):
    dest = Pod(namespace, worker())
    monitoring = "monitoring"
    cases: list[tuple[str, Pod, Pod | str, tuple[int, str], bool]] = [
        ("worker to worker, rendezvous", Pod(namespace, worker()), dest, RENDEZVOUS, True),
        ("worker to worker, NCCL port", Pod(namespace, worker()), dest, EPHEMERAL, True),
        ("worker to worker, metrics", Pod(namespace, worker()), dest, METRICS, True),
        # The policy can't name the job: another job's workers of the namespace get in too.
        ("another job's worker", Pod(namespace, worker("other")), dest, EPHEMERAL, True),
        ("operator to metrics", Pod(RELEASE_NAMESPACE, OPERATOR_POD), dest, METRICS, True),
        ("operator to rendezvous", Pod(RELEASE_NAMESPACE, OPERATOR_POD), dest, RENDEZVOUS, False),
        ("chart test pod to metrics", Pod(RELEASE_NAMESPACE, CHART_TEST_POD), dest, METRICS, False),
        ("operator look-alike elsewhere", Pod("team-b", OPERATOR_POD), dest, METRICS, False),
        ("prometheus to metrics", Pod(monitoring, PROMETHEUS_POD), dest, METRICS, True),
        ("prometheus to rendezvous", Pod(monitoring, PROMETHEUS_POD), dest, RENDEZVOUS, False),
        ("prometheus to NCCL port", Pod(monitoring, PROMETHEUS_POD), dest, EPHEMERAL, False),
        ("other monitoring pod", Pod(monitoring, {"app": "grafana"}), dest, METRICS, False),
        ("prometheus look-alike", Pod(namespace, PROMETHEUS_POD), dest, METRICS, False),
        ("other pod to metrics", Pod(namespace, OTHER_POD), dest, METRICS, False),
        ("other pod to rendezvous", Pod(namespace, OTHER_POD), dest, RENDEZVOUS, False),
        ("other pod to NCCL port", Pod(namespace, OTHER_POD), dest, EPHEMERAL, False),
        ("worker of another namespace", Pod("team-z", worker()), dest, RENDEZVOUS, False),
        # Not selected: the policy is about workers, nothing else in the namespace.
        ("other pod to other pod", Pod(namespace, OTHER_POD), Pod(namespace, {}), (80, ""), True),
        # No egress rule: workers reach object storage, the API server, DNS.
        ("worker to object storage", Pod(namespace, worker()), "203.0.113.7", (443, ""), True),
    ]
    verdicts = allowed(policies(render(WATCHED)), [case[1:4] for case in cases])
    got = {case[0]: verdict for case, verdict in zip(cases, verdicts, strict=True)}
    assert got == {case[0]: case[4] for case in cases}
    # Without the policy, every one of these is allowed: it is the policy that denies.
    assert all(allowed([], [case[1:4] for case in cases]))


def test_prometheus_selectors_and_extra_ingress_are_configurable(render, allowed, tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "networkPolicy": {
                    "enabled": True,
                    "prometheus": {
                        # Helm merges these into the defaults: null drops a default's key.
                        "namespaceSelector": {
                            "matchLabels": {
                                "kubernetes.io/metadata.name": None,
                                "team": "observability",
                            }
                        },
                        "podSelector": {
                            "matchLabels": {"app.kubernetes.io/name": None},
                            "matchExpressions": [
                                {"key": "app", "operator": "In", "values": ["vmagent"]}
                            ],
                        },
                    },
                    "extraIngress": [
                        {
                            "from": [{"namespaceSelector": {"matchLabels": {"team": "perf"}}}],
                            "ports": [{"port": 29500, "protocol": "TCP"}],
                        }
                    ],
                }
            }
        )
    )
    rendered = policies(render({}, f"--values={values}"))
    dest = Pod(RELEASE_NAMESPACE, worker())

    observability, perf = {"team": "observability"}, {"team": "perf"}
    vmagent = Pod("obs", {"app": "vmagent"}, observability)
    profiler = Pod("profiler", OTHER_POD, perf)
    cases: list[tuple[Pod, Pod | str, tuple[int, str], bool]] = [
        (vmagent, dest, METRICS, True),
        (vmagent, dest, RENDEZVOUS, False),
        (Pod("obs", {"app": "grafana"}, observability), dest, METRICS, False),
        (Pod("monitoring", PROMETHEUS_POD), dest, METRICS, False),  # the default selectors
        (profiler, dest, RENDEZVOUS, True),  # extraIngress
        (profiler, dest, METRICS, False),
        (Pod("elsewhere", OTHER_POD), dest, RENDEZVOUS, False),
    ]
    assert allowed(rendered, [c[:3] for c in cases]) == [c[3] for c in cases]

    no_prometheus = {"networkPolicy.enabled": "true", "networkPolicy.prometheus.enabled": "false"}
    without = policies(render(no_prometheus))
    assert allowed(without, [(Pod("monitoring", PROMETHEUS_POD), dest, METRICS)]) == [False]


def test_prometheus_namespace_is_one_value_away(render, allowed):
    name = "networkPolicy.prometheus.namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name"
    rendered = policies(render({"networkPolicy.enabled": "true", name: "observability"}))
    dest = Pod(RELEASE_NAMESPACE, worker())
    connections = [
        (Pod("observability", PROMETHEUS_POD), dest, METRICS),
        (Pod("monitoring", PROMETHEUS_POD), dest, METRICS),
    ]
    assert allowed(rendered, connections) == [True, False]


@pytest.mark.parametrize(
    ("bad_value", "named_field"),
    [
        ("networkPolicy.enabled=yes", "/networkPolicy/enabled"),
        ("networkPolicy.namespaces={Team_A}", "/networkPolicy/namespaces/0"),
        (
            "networkPolicy.extraIngress[0].to[0].ipBlock.cidr=0.0.0.0/0",
            "/networkPolicy/extraIngress/0",
        ),
        (
            "networkPolicy.prometheus.podSelector.matchExpressions[0].operator=Maybe",
            "/networkPolicy/prometheus/podSelector/matchExpressions/0",
        ),
    ],
)
def test_values_schema_rejects_bad_network_policy_value(helm, bad_value, named_field):
    result = run_tool(
        helm, "template", "rel", CHART_DIR,
        f"--kube-version={KUBE_VERSION}", f"--set={bad_value}",
    )  # fmt: skip
    assert result.returncode != 0, f"{bad_value} was accepted"
    assert named_field in result.stderr, result.stderr
