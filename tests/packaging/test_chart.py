"""The Helm chart rendered offline: lint, API schemas, values schema, RBAC, security, monitoring."""

from __future__ import annotations

import filecmp
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chart_tools import CHART_DIR, KUBE_VERSION, ROOT, run_tool

CLUSTER_SCOPE = {"rbac.scope": "cluster"}
PROMETHEUS_OPERATOR_API = (
    "--api-versions=monitoring.coreos.com/v1/PodMonitor,monitoring.coreos.com/v1/PrometheusRule"
)
MONITORING_KINDS = {"PodMonitor", "PrometheusRule"}

# Every verb the operator uses, and why (diffusion_operator.cache, .kube, .leader). Anything more
# is a privilege nobody needs; anything less breaks a job (test_chart_install proves it enough).
# Passes read the watch caches (list + watch), not the API.
OPERATOR_PERMISSIONS = {
    ("diffusion.dev", "diffusiontrainingjobs", "list"),  # cache
    ("diffusion.dev", "diffusiontrainingjobs", "watch"),  # cache: a change triggers a pass
    ("diffusion.dev", "diffusiontrainingjobs", "delete"),  # TTL after finish
    ("diffusion.dev", "diffusiontrainingjobs/status", "patch"),  # status
    ("diffusion.dev", "diffusiontrainingjobs/finalizers", "update"),  # blockOwnerDeletion
    ("batch", "jobs", "get"),  # whose Job holds the attempt's name
    ("batch", "jobs", "list"),  # cache
    ("batch", "jobs", "watch"),  # cache: a change triggers a pass
    ("batch", "jobs", "create"),  # one Indexed Job per attempt
    ("batch", "jobs", "patch"),  # suspend / resume
    ("batch", "jobs", "delete"),  # gang restart
    ("", "pods", "list"),  # cache of workers
    ("", "pods", "watch"),  # a change triggers a pass
    ("", "pods", "delete"),  # force-delete a worker stuck on a dead node
    ("", "configmaps", "list"),  # cache (the operator's, by label)
    ("", "configmaps", "watch"),
    ("", "configmaps", "create"),  # trainer config
    ("", "configmaps", "patch"),  # trainer config on spec change
    ("", "services", "list"),  # cache (the operator's, by label)
    ("", "services", "watch"),
    ("", "services", "create"),  # headless rendezvous Service
    ("", "events", "create"),  # one Event per transition
}


def permissions(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = of_kind(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container["env"]}


@pytest.mark.parametrize("values", [{}, CLUSTER_SCOPE], ids=["namespaced", "cluster"])
def test_chart_passes_strict_lint(helm, values):
    flags = [f"--set={k}={v}" for k, v in values.items()]
    result = run_tool(helm, "lint", "--strict", CHART_DIR, *flags)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("values", "helm_args"),
    [
        ({}, ["--include-crds"]),
        (CLUSTER_SCOPE, [PROMETHEUS_OPERATOR_API]),
        ({"rbac.watchNamespaces": "{team-a,team-b}"}, [PROMETHEUS_OPERATOR_API]),
    ],
    ids=["default", "cluster-with-monitoring", "extra-namespaces"],
)
def test_rendered_objects_match_kubernetes_api_schemas(render, values, helm_args):
    objects = render(values, *helm_args)
    built_in = [o for o in objects if o["kind"] not in MONITORING_KINDS]
    assert len(built_in) >= 5  # ServiceAccounts, RBAC, Deployment
    for obj in built_in:
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            name = f"{obj['kind']}/{obj['metadata']['name']}"
            pytest.fail(f"{name}: {str(error).splitlines()[0]}")


@pytest.mark.parametrize(
    ("bad_value", "named_field"),
    [
        ("rbac.scope=everything", "/rbac/scope"),
        (
            "securityContext.allowPrivilegeEscalation=true",
            "/securityContext/allowPrivilegeEscalation",
        ),
        ("securityContext.capabilities.add={NET_ADMIN}", "/securityContext/capabilities/add"),
        ("podSecurityContext.runAsNonRoot=false", "/podSecurityContext/runAsNonRoot"),
        ("operator.livenessPort=0", "/operator/livenessPort"),
        ("operator.logFormat=xml", "/operator/logFormat"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("rbac.watchNamespaces={Team_A}", "/rbac/watchNamespaces/0"),
        ("monitoring.interval=often", "/monitoring/interval"),
        ("replicas=2", "replicas"),
        ("replicaCount=0", "/replicaCount"),
        ("operator.reconcileIntervalSeconds=5", "reconcileIntervalSeconds"),
        ("operator.workers=0", "/operator/workers"),
        ("leaderElection.leaseDurationSeconds=1", "/leaderElection/leaseDurationSeconds"),
        ("podDisruptionBudget.minAvailable=-1", "/podDisruptionBudget/minAvailable"),
        ("readinessProbe.path=/", "/readinessProbe"),
    ],
)
def test_values_schema_rejects_bad_value(helm, bad_value, named_field):
    result = run_tool(
        helm, "template", "rel", CHART_DIR, f"--kube-version={KUBE_VERSION}", f"--set={bad_value}"
    )
    assert result.returncode != 0, f"{bad_value} was accepted"
    assert "schema" in result.stderr
    assert named_field in result.stderr, result.stderr


def undocumented_values(lines: list[str]) -> list[str]:
    """Leaf keys of values.yaml with no comment right above them or above an enclosing key."""
    undocumented = []
    enclosing: list[tuple[int, bool]] = []  # (indent, documented) of the open sections
    previous = ""
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("- "):
            previous = stripped
            continue
        indent = len(line) - len(line.lstrip())
        enclosing = [(i, d) for i, d in enclosing if i < indent]
        documented = previous.startswith("#") or any(d for _, d in enclosing)
        if stripped.endswith(":"):
            enclosing.append((indent, documented))
        elif not documented:
            undocumented.append(stripped)
        previous = stripped
    return undocumented


def test_every_value_is_documented_by_a_comment():
    assert undocumented_values((CHART_DIR / "values.yaml").read_text().splitlines()) == []
    assert undocumented_values(["image:", "  # -- the tag", "  tag: x", "  pull: y"]) == ["pull: y"]


def test_values_schema_knows_every_default_value():
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])


def test_chart_crd_is_the_generated_crd():
    chart_crd = CHART_DIR / "crds" / "diffusiontrainingjobs.yaml"
    assert filecmp.cmp(chart_crd, ROOT / "manifests" / "crd.yaml", shallow=False), (
        "helm/diffusion-operator/crds/ is stale: run `make chart-crd`"
    )


def test_chart_readme_is_generated_from_values():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools/packaging/chart_readme.py")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    readme = (CHART_DIR / "README.md").read_text()
    assert result.stdout == readme, (
        "helm/diffusion-operator/README.md is stale: run `make manifests`"
    )
    assert "| `workerServiceAccount.allowed` | `[]` |" in readme


def test_install_manifests_are_rendered_from_the_chart(helm):
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools/packaging/render_manifests.py"), f"--helm={helm}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    checked_in = (ROOT / "manifests" / "install.yaml").read_text()
    assert result.stdout == checked_in, "manifests/install.yaml is stale: run `make manifests`"
    objects = [doc for doc in yaml.safe_load_all(checked_in) if doc]
    assert {o["kind"] for o in objects} >= {"Namespace", "CustomResourceDefinition", "Deployment"}
    assert "helm.sh/chart" not in checked_in
    assert "managed-by: Helm" not in checked_in


def test_operator_deployment_is_two_restricted_replicas(render):
    objects = render()
    (deployment,) = of_kind(objects, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    # A new pod first, then the old one goes: a ready standby exists throughout the rollout.
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = operator_container(objects)
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[probe["port"]] == 8080 == int(env_of(container)["DTJ_OPERATOR_LIVENESS_PORT"])
    readiness = container["readinessProbe"]
    assert readiness["httpGet"] == {"path": "/readyz", "port": "healthz"}
    assert readiness["periodSeconds"] <= container["livenessProbe"]["periodSeconds"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert "emptyDir" in tmp
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_operator_settings_are_valid_operator_settings(render):
    from diffusion_operator.settings import (
        ENV_PREFIX,
        OperatorSettings,
        lease_namespace,
        load_settings,
    )

    env = env_of(operator_container(render({"operator.logFormat": "text"})))
    known = {ENV_PREFIX + name.upper() for name in OperatorSettings.model_fields}
    assert {name for name in env if name.startswith(ENV_PREFIX)} <= known
    assert "DTJ_OPERATOR_RECONCILE_INTERVAL_S" not in env
    settings = load_settings({k: v for k, v in env.items() if v is not None})
    assert settings.namespaces == ["ops"]
    assert settings.log_format == "text"
    assert settings.liveness_port == 8080
    assert (settings.progress_interval_s, settings.resync_interval_s) == (10, 300)
    assert (settings.workers, settings.stall_timeout_s) == (16, 60)
    assert settings.leader_election is True
    assert settings.lease_duration_s == 15
    assert settings.lease_name == "rel-diffusion-operator"  # one Lease per release
    assert lease_namespace(settings, environ={}) == "ops"
    # Workers may run as the chart's worker ServiceAccount only, unless more are allowed.
    assert settings.allowed_service_accounts == ["rel-diffusion-operator-worker"]
    more = env_of(operator_container(render({"workerServiceAccount.allowed": "{etl}"})))
    assert load_settings(
        {k: v for k, v in more.items() if v is not None}
    ).allowed_service_accounts == [
        "rel-diffusion-operator-worker",
        "etl",
    ]
    off = env_of(
        operator_container(render({"replicaCount": "1", "leaderElection.enabled": "false"}))
    )
    assert load_settings({k: v for k, v in off.items() if v is not None}).leader_election is False


def test_pod_name_and_namespace_come_from_the_downward_api(render):
    env = {e["name"]: e for e in operator_container(render())["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def pod_labels(objects: list[dict[str, Any]]) -> dict[str, str]:
    (deployment,) = of_kind(objects, "Deployment")
    return deployment["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) == {"matchLabels"}
    return selector["matchLabels"].items() <= labels.items()


def test_replicas_spread_over_nodes_unless_affinity_is_set(render):
    objects = render()
    (deployment,) = of_kind(objects, "Deployment")
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (preferred,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    term = preferred["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"] == deployment["spec"]["selector"]
    assert selects(term["labelSelector"], pod_labels(objects))
    required = "requiredDuringSchedulingIgnoredDuringExecution"
    zone = "topology.kubernetes.io/zone"
    custom = render({f"affinity.podAntiAffinity.{required}[0].topologyKey": zone})
    (deployment,) = of_kind(custom, "Deployment")
    own = {"podAntiAffinity": {required: [{"topologyKey": zone}]}}
    assert deployment["spec"]["template"]["spec"]["affinity"] == own


def test_pod_disruption_budget_keeps_one_operator_pod(render):
    objects = render()
    (pdb,) = of_kind(objects, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["metadata"]["namespace"] == "ops"
    assert pdb["spec"]["minAvailable"] == 1
    assert selects(pdb["spec"]["selector"], pod_labels(objects))
    (deployment,) = of_kind(objects, "Deployment")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    # One replica: a PDB would only block node drains.
    assert not of_kind(render({"replicaCount": "1"}), "PodDisruptionBudget")
    assert not of_kind(render({"podDisruptionBudget.enabled": "false"}), "PodDisruptionBudget")


LEASES = {
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"),
}


def leader_election_roles(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        r for r in of_kind(objects, "Role") if r["metadata"]["name"].endswith("-leader-election")
    ]


@pytest.mark.parametrize("values", [{}, CLUSTER_SCOPE], ids=["namespaced", "cluster"])
def test_leader_election_role_grants_only_the_release_lease(render, values):
    objects = render({**values, "rbac.watchNamespaces": "{team-a}"})
    (role,) = leader_election_roles(objects)
    assert role["metadata"]["name"] == "rel-diffusion-operator-leader-election"
    assert role["metadata"]["namespace"] == "ops"
    assert permissions(role) == LEASES
    # get and update only on this release's Lease (create can't be limited to a name).
    env = env_of(operator_container(objects))
    for rule in role["rules"]:
        if set(rule["verbs"]) & {"get", "update"}:
            assert rule["resourceNames"] == [env["DTJ_OPERATOR_LEASE_NAME"]]
    assert env["DTJ_OPERATOR_LEASE_NAMESPACE"] == "ops"
    bindings = [
        b
        for b in of_kind(objects, "RoleBinding")
        if b["roleRef"]["name"] == role["metadata"]["name"]
    ]
    assert [(b["metadata"]["namespace"], b["roleRef"]["kind"]) for b in bindings] == [
        ("ops", "Role")
    ]
    assert bindings[0]["subjects"] == [
        {"kind": "ServiceAccount", "name": "rel-diffusion-operator", "namespace": "ops"}
    ]
    # No other role grants anything on leases.
    others = [r for r in of_kind(objects, "Role") + of_kind(objects, "ClusterRole") if r != role]
    assert not [p for r in others for p in permissions(r) if p[1] == "leases"]


def test_without_leader_election_one_replica_is_replaced(render):
    objects = render({"replicaCount": "1", "leaderElection.enabled": "false"})
    (deployment,) = of_kind(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not leader_election_roles(objects)
    assert not of_kind(objects, "PodDisruptionBudget")
    env = env_of(operator_container(objects))
    assert env["DTJ_OPERATOR_LEADER_ELECTION"] == "false"
    assert "DTJ_OPERATOR_LEASE_NAMESPACE" not in env


def test_more_than_one_replica_without_leader_election_is_refused(helm):
    result = run_tool(
        helm, "template", "rel", CHART_DIR, f"--kube-version={KUBE_VERSION}",
        "--set=leaderElection.enabled=false",  # replicaCount stays 2
    )  # fmt: skip
    assert result.returncode != 0, "two replicas without leader election were accepted"
    assert "replicaCount=2 needs leaderElection.enabled=true" in result.stderr, result.stderr


NODE_READER = {("", "nodes", "get"), ("", "nodes", "list"), ("", "nodes", "watch")}


def node_reader(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in of_kind(objects, "ClusterRole") if r["metadata"]["name"].endswith("-reader")]


def bound_cluster_roles(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The operator's ClusterRoles (the chart binds them); the user roles are only aggregated."""
    bound = {b["roleRef"]["name"] for b in of_kind(objects, "ClusterRoleBinding")}
    return [r for r in of_kind(objects, "ClusterRole") if r["metadata"]["name"] in bound]


def test_namespaced_scope_binds_roles_in_each_watched_namespace(render):
    objects = render({"rbac.watchNamespaces": "{team-a,team-b}"})
    # The operator's only cluster-wide grant: reading nodes.
    (reader,) = bound_cluster_roles(objects)
    assert permissions(reader) == NODE_READER
    assert not bound_cluster_roles(render({"rbac.readNodes": "false"}))
    roles = [r for r in of_kind(objects, "Role") if r not in leader_election_roles(objects)]
    assert {r["metadata"]["namespace"] for r in roles} == {"ops", "team-a", "team-b"}
    for role in roles:
        assert permissions(role) == OPERATOR_PERMISSIONS
    for binding in of_kind(objects, "RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "rel-diffusion-operator", "namespace": "ops"}
        ]
    env = env_of(operator_container(objects))
    assert env["DTJ_OPERATOR_NAMESPACES"] == "ops,team-a,team-b"


def test_cluster_scope_uses_one_cluster_role(render):
    objects = render(CLUSTER_SCOPE)
    # In the release namespace, only the Lease.
    assert of_kind(objects, "Role") == leader_election_roles(objects)
    assert {b["roleRef"]["name"] for b in of_kind(objects, "RoleBinding")} == {
        "rel-diffusion-operator-leader-election"
    }
    (role,) = [r for r in bound_cluster_roles(objects) if r not in node_reader(objects)]
    assert permissions(role) == OPERATOR_PERMISSIONS
    bindings = of_kind(objects, "ClusterRoleBinding")
    assert {b["roleRef"]["name"] for b in bindings} == {
        role["metadata"]["name"],
        node_reader(objects)[0]["metadata"]["name"],
    }
    assert env_of(operator_container(objects))["DTJ_OPERATOR_NAMESPACES"] == ""


@pytest.mark.parametrize("values", [{}, CLUSTER_SCOPE], ids=["namespaced", "cluster"])
def test_no_role_touches_secrets_or_uses_wildcards(render, values):
    roles = of_kind(render(values), "Role") + of_kind(render(values), "ClusterRole")
    assert roles
    for role in roles:
        granted = permissions(role)
        assert not any(resource == "secrets" for _, resource, _ in granted)
        assert not any("*" in part for permission in granted for part in permission)


def test_worker_service_account_has_no_token_and_no_role(render):
    objects = render({"rbac.watchNamespaces": "{team-a}"})
    workers = [
        sa
        for sa in of_kind(objects, "ServiceAccount")
        if sa["metadata"]["name"].endswith("-worker")
    ]
    assert {sa["metadata"]["namespace"] for sa in workers} == {"ops", "team-a"}
    assert all(sa["automountServiceAccountToken"] is False for sa in workers)
    bound = {
        subject["name"]
        for binding in of_kind(objects, "RoleBinding") + of_kind(objects, "ClusterRoleBinding")
        for subject in binding["subjects"]
    }
    assert "rel-diffusion-operator-worker" not in bound


def test_monitoring_renders_only_where_the_prometheus_operator_api_exists(render):
    assert not [o for o in render() if o["kind"] in MONITORING_KINDS]
    objects = render(
        {"monitoring.labels.release": "kube-prometheus-stack"}, PROMETHEUS_OPERATOR_API
    )
    monitors = of_kind(objects, "PodMonitor")
    assert len(monitors) == 2
    rules = of_kind(objects, "PrometheusRule")
    assert len(rules) == 1
    for obj in [*monitors, *rules]:
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    workers = next(m for m in monitors if m["metadata"]["name"].endswith("-workers"))
    assert workers["spec"]["namespaceSelector"] == {"matchNames": ["ops"]}
    assert workers["spec"]["selector"]["matchLabels"]["diffusion.dev/role"] == "worker"
    cluster_workers = of_kind(render(CLUSTER_SCOPE, PROMETHEUS_OPERATOR_API), "PodMonitor")
    assert any(m["spec"].get("namespaceSelector") == {"any": True} for m in cluster_workers)
    assert not of_kind(
        render({"monitoring.enabled": "false"}, PROMETHEUS_OPERATOR_API), "PodMonitor"
    )


def test_monitoring_objects_are_gated_per_kind_and_can_be_forced(render):
    group_only = render({}, "--api-versions=monitoring.coreos.com/v1")
    assert not [o for o in group_only if o["kind"] in MONITORING_KINDS]
    monitors_only = render({}, "--api-versions=monitoring.coreos.com/v1/PodMonitor")
    assert len(of_kind(monitors_only, "PodMonitor")) == 2
    assert not of_kind(monitors_only, "PrometheusRule")
    forced = render({"monitoring.force": "true"})  # no API versions at all
    assert len(of_kind(forced, "PodMonitor")) == 2
    assert len(of_kind(forced, "PrometheusRule")) == 1
    assert not of_kind(
        render({"monitoring.force": "true", "monitoring.enabled": "false"}), "PodMonitor"
    )


def operator_down_test(expected_annotations: dict[str, str]) -> dict[str, Any]:
    """A promtool rule test: the operator's Deployment loses its replica at minute 2."""
    available = "kube_deployment_status_replicas_available"
    operator = 'deployment="rel-diffusion-operator"'
    firing = {
        "exp_labels": {
            "severity": "critical",
            "namespace": "ops",
            "deployment": "rel-diffusion-operator",
        },
        "exp_annotations": expected_annotations,
    }
    return {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": f'{available}{{namespace="ops",{operator}}}',
                        "values": "1 1 0x10",
                    },
                    {
                        "series": f'{available}{{namespace="ops",deployment="other"}}',
                        "values": "0x10",
                    },
                ],
                "alert_rule_test": [
                    {"eval_time": "4m", "alertname": "DiffusionOperatorDown", "exp_alerts": []},
                    {
                        "eval_time": "9m",
                        "alertname": "DiffusionOperatorDown",
                        "exp_alerts": [firing],
                    },
                ],
            }
        ],
    }


def test_alert_rules_pass_promtool_checks_and_fire_when_the_operator_is_down(
    render, tool_bin_dir, tmp_path
):
    (rule,) = of_kind(render({}, PROMETHEUS_OPERATOR_API), "PrometheusRule")
    groups = rule["spec"]["groups"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    annotations = groups[0]["rules"][0]["annotations"]
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(operator_down_test(annotations)))
    promtool = tool_bin_dir / "promtool"
    check = run_tool(promtool, "check", "rules", tmp_path / "rules.yaml")
    assert check.returncode == 0, check.stdout + check.stderr
    unit = run_tool(promtool, "test", "rules", tmp_path / "test.yaml")
    assert unit.returncode == 0, unit.stdout + unit.stderr


def dashboard_config_maps(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        o
        for o in of_kind(objects, "ConfigMap")
        if o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]


def test_one_dashboard_config_map_per_dashboard_file(render):
    num_files = len(list((CHART_DIR / "dashboards").glob("*.json")))
    assert len(dashboard_config_maps(render())) == num_files


def test_dashboard_files_become_labelled_config_maps(render, tmp_path):
    chart = tmp_path / "diffusion-operator"
    shutil.copytree(CHART_DIR, chart)
    dashboard = {"title": "Training", "panels": []}
    (chart / "dashboards" / "zz-training.json").write_text(json.dumps(dashboard))
    objects = render({"dashboards.annotations.grafana_folder": "ML"}, chart=chart)
    config_map = next(
        cm for cm in dashboard_config_maps(objects) if "zz-training.json" in cm["data"]
    )
    assert json.loads(config_map["data"]["zz-training.json"]) == dashboard
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "ML"}
    assert not dashboard_config_maps(render({"dashboards.enabled": "false"}, chart=chart))


def test_image_defaults_to_the_chart_app_version_and_digest_wins(render):
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    image = operator_container(render())["image"]
    assert image == f"ghcr.io/diffusion-operator/operator:{chart['appVersion']}"
    digest = "sha256:" + "a" * 64
    pinned = operator_container(render({"image.digest": digest}))["image"]
    assert pinned == f"ghcr.io/diffusion-operator/operator@{digest}"


def test_notes_point_at_an_example_that_exists():
    notes = (CHART_DIR / "templates" / "NOTES.txt").read_text()
    assert "-f manifests/examples/tiny-cpu.yaml" in notes
    assert Path(ROOT / "manifests" / "examples" / "tiny-cpu.yaml").is_file()


def test_user_roles_aggregate_into_the_default_roles_unbound(render):
    objects = render({})
    users = [r for r in of_kind(objects, "ClusterRole") if r not in bound_cluster_roles(objects)]
    aggregated = {
        r["metadata"]["name"]: sorted(k for k in r["metadata"]["labels"] if "aggregate-to" in k)
        for r in users
    }
    assert aggregated == {
        "rel-diffusion-operator-view": ["rbac.authorization.k8s.io/aggregate-to-view"],
        "rel-diffusion-operator-edit": [
            "rbac.authorization.k8s.io/aggregate-to-admin",
            "rbac.authorization.k8s.io/aggregate-to-edit",
        ],
    }
    without = render({"rbac.aggregateToDefaultRoles": "false"})
    assert of_kind(without, "ClusterRole") == bound_cluster_roles(without)
