"""`dtj selfcheck`: is the installation working? The CRD is served and readable in the namespace,
and (with leader election) an operator holds the release's Lease and renewed it recently. Run by
the chart's `helm test` hook, under the operator's ServiceAccount."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from diffusion_operator import constants as c


def lease_age_s(renew_time: datetime | None, now: datetime) -> float | None:
    return None if renew_time is None else (now - renew_time).total_seconds()


def check_lease(namespace: str, name: str, max_age_s: float) -> str:
    from kubernetes import client

    lease = client.CoordinationV1Api().read_namespaced_lease(name, namespace)
    holder, age = lease.spec.holder_identity, lease_age_s(lease.spec.renew_time, datetime.now(UTC))
    if not holder or age is None or age > max_age_s:
        raise SystemExit(
            f"FAIL: no operator leads: Lease {namespace}/{name} has holder {holder!r}, renewed"
            f" {age if age is None else round(age)} s ago (more than {max_age_s:.0f} s)"
        )
    return f"ok: operator {holder} leads (Lease {namespace}/{name} renewed {age:.0f} s ago)"


def run_selfcheck(args: argparse.Namespace) -> int:
    from kubernetes import client, config

    config.load_incluster_config()
    jobs = client.CustomObjectsApi().list_namespaced_custom_object(
        c.GROUP, c.VERSION, args.namespace, c.PLURAL
    )
    print(f"ok: {c.PLURAL}.{c.GROUP} served; {len(jobs['items'])} job(s) in {args.namespace}")
    if args.lease:
        print(check_lease(args.namespace, args.lease, args.max_lease_age_s))
    return 0


def add_selfcheck_parser(sub: argparse._SubParsersAction) -> None:
    check = sub.add_parser(
        "selfcheck", help="is the CRD served and an operator leading? (helm test)"
    )
    check.add_argument("--namespace", required=True, help="the release namespace")
    check.add_argument("--lease", help="the release's Lease; omit without leader election")
    check.add_argument("--max-lease-age-s", type=float, default=60.0)
    check.set_defaults(func=run_selfcheck)
