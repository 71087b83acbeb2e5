"""The RBAC table of docs/install.md is exactly what the chart grants: every rule of every rendered
Role and ClusterRole, no more and no less."""

from __future__ import annotations

import re
from typing import Any

import pytest
from chart_tools import ROOT

DOC = ROOT / "docs" / "install.md"
HEADER = "| role | apiGroup | resource | verbs | why |"
RESOURCE = re.compile(r"^`([^`]+)`(?: \(only `([^`]+)`\))?$")  # `leases` (only `<fullname>`)

# (role name, apiGroup, resource, resourceNames) -> verbs
Grants = dict[tuple[str, str, str, tuple[str, ...]], frozenset[str]]


def documented(fullname: str) -> Grants:
    """The table's rows, with `<fullname>` spelled out and `core` as the core group ""."""
    lines = DOC.read_text().splitlines()
    start = lines.index(HEADER) + 2  # past the header and its |---| line
    grants: Grants = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        role, group, resource, verbs = (
            cell.strip().replace("<fullname>", fullname) for cell in line.split("|")[1:5]
        )
        match = RESOURCE.match(resource)
        assert match, f"resource cell {resource!r} in {line!r}"
        names = (match[2],) if match[2] else ()
        group = "" if group == "core" else group.strip("`")
        grants[role.strip("`"), group, match[1], names] = frozenset(verbs.split(", "))
    return grants


def granted(objects: list[dict[str, Any]]) -> Grants:
    """The rules of every rendered Role and ClusterRole; a Role rendered in several namespaces
    must hold the same rules in each."""
    by_object: dict[tuple[str, str | None], Grants] = {}
    for obj in objects:
        if obj["kind"] not in {"Role", "ClusterRole"}:
            continue
        name = obj["metadata"]["name"]
        rules = by_object.setdefault((name, obj["metadata"].get("namespace")), {})
        for rule in obj["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    key = (name, group, resource, tuple(rule.get("resourceNames", ())))
                    rules[key] = rules.get(key, frozenset()) | frozenset(rule["verbs"])
    grants: Grants = {}
    for rules in by_object.values():
        for key, verbs in rules.items():
            assert grants.get(key, verbs) == verbs, f"{key} differs between namespaces"
            grants[key] = verbs
    return grants


@pytest.mark.parametrize(
    ("values", "left_out"),
    [
        ({}, None),
        ({"rbac.scope": "cluster"}, None),
        ({"rbac.watchNamespaces": "{ml-team}"}, None),
        ({"rbac.readNodes": "false"}, "-node-reader"),
        ({"leaderElection.enabled": "false", "replicaCount": "1"}, "-leader-election"),
        ({"rbac.aggregateToDefaultRoles": "false"}, ("-view", "-edit")),
    ],
    ids=[
        "default",
        "cluster-scope",
        "watch-namespaces",
        "no-node-reader",
        "no-leader-election",
        "no-user-roles",
    ],
)
def test_install_doc_rbac_table_is_what_the_chart_grants(render, values, left_out):
    objects = render(values)
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    fullname = deployment["metadata"]["name"]
    expected = documented(fullname)
    for suffix in (left_out,) if isinstance(left_out, str) else left_out or ():
        expected = {k: v for k, v in expected.items() if k[0] != fullname + suffix}
    assert granted(objects) == expected
