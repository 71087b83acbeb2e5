"""`kubectl dtj` (the `kubectl-dtj` executable): list, describe, logs, suspend, resume, submit and
watch DiffusionTrainingJobs with kubectl's kubeconfig, context and namespace flags; `completion`
prints a shell's completion script for the `kubectl-dtj` command."""

from __future__ import annotations

import argparse
import sys
import time
from importlib.metadata import version
from typing import Any

import yaml

from diffusion_operator import constants as c
from diffusion_operator.kubectl_plugin.connection import Connection, connect

SUBCOMMANDS = ("list", "describe", "logs", "suspend", "resume", "submit", "watch", "completion")
TERMINAL = ("Succeeded", "Failed")


def package_version() -> str:
    return version("diffusion-operator")


def list_jobs(conn: Connection, all_namespaces: bool) -> list[dict[str, Any]]:
    if all_namespaces:
        found = conn.custom.list_cluster_custom_object(c.GROUP, c.VERSION, c.PLURAL)
    else:
        found = conn.custom.list_namespaced_custom_object(
            c.GROUP, c.VERSION, conn.namespace, c.PLURAL
        )
    return sorted(found["items"], key=lambda j: (j["metadata"]["namespace"], j["metadata"]["name"]))


def run_list(conn: Connection, args: argparse.Namespace) -> int:
    from diffusion_operator.kubectl_plugin.table import format_table

    jobs = list_jobs(conn, args.all_namespaces)
    if not jobs:
        where = "any namespace" if args.all_namespaces else f"namespace {conn.namespace}"
        print(f"No DiffusionTrainingJobs in {where}.")
        return 0
    print(format_table(jobs, args.all_namespaces))
    return 0


def run_watch(conn: Connection, args: argparse.Namespace) -> int:
    """The table every --interval seconds; --until-done stops once every job has finished."""
    from diffusion_operator.kubectl_plugin.table import format_table

    while True:
        jobs = list_jobs(conn, args.all_namespaces)
        print(format_table(jobs, args.all_namespaces), end="\n\n", flush=True)
        phases = [(job.get("status") or {}).get("phase") for job in jobs]
        if args.until_done and jobs and all(phase in TERMINAL for phase in phases):
            return 0 if all(phase == "Succeeded" for phase in phases) else 1
        time.sleep(args.interval)


def run_describe(conn: Connection, args: argparse.Namespace) -> int:
    from diffusion_operator.kubectl_plugin.describe import describe_text

    job = conn.custom.get_namespaced_custom_object(
        c.GROUP, c.VERSION, conn.namespace, c.PLURAL, args.name
    )
    selector = f"involvedObject.name={args.name},involvedObject.kind={c.KIND}"
    events = conn.core.list_namespaced_event(conn.namespace, field_selector=selector).items
    as_dicts = [conn.api.sanitize_for_serialization(e) for e in events]
    as_dicts.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    sys.stdout.write(describe_text(job, as_dicts))
    return 0


def run_logs(conn: Connection, args: argparse.Namespace) -> int:
    from diffusion_operator.kubectl_plugin.logs import LogsError, print_logs

    try:
        print_logs(conn, args.name, args.rank, args.attempt, follow=args.follow, tail=args.tail)
    except LogsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def run_set_suspend(conn: Connection, name: str, suspend: bool) -> int:
    body = {"spec": {"runPolicy": {"suspend": suspend}}}
    conn.custom.patch_namespaced_custom_object(
        c.GROUP, c.VERSION, conn.namespace, c.PLURAL, name, body
    )
    print(f"diffusiontrainingjob.{c.GROUP}/{name} {'suspended' if suspend else 'resumed'}")
    return 0


def run_submit(conn: Connection | None, args: argparse.Namespace) -> int:
    from diffusion_operator.kubectl_plugin.submit import SubmitError, build_manifest

    image = args.image or f"ghcr.io/diffusion-operator/trainer:{package_version()}"
    try:
        manifest = build_manifest(args.name, args.preset, image, args.set or [])
    except SubmitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.dry_run or conn is None:
        sys.stdout.write(yaml.safe_dump(manifest, sort_keys=False))
        return 0
    conn.custom.create_namespaced_custom_object(
        c.GROUP, c.VERSION, conn.namespace, c.PLURAL, manifest
    )
    print(f"diffusiontrainingjob.{c.GROUP}/{manifest['metadata']['name']} created")
    return 0


ALL_NAMESPACES = "jobs of every namespace"


def add_command(sub: argparse._SubParsersAction, name: str, text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=text, description=text)
    return parser


def add_commands(sub: argparse._SubParsersAction) -> None:
    listing = add_command(sub, "list", "the jobs with phase, step, loss, speed, ETA")
    listing.add_argument("-A", "--all-namespaces", action="store_true", help=ALL_NAMESPACES)
    watch = add_command(sub, "watch", "the list, refreshed (Ctrl-C stops)")
    watch.add_argument("-A", "--all-namespaces", action="store_true", help=ALL_NAMESPACES)
    watch.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    watch.add_argument("--until-done", action="store_true", help="stop once every job finished")
    describe = add_command(sub, "describe", "spec, conditions, attempts, failures, events")
    describe.add_argument("name", help="the job")
    logs = add_command(sub, "logs", "a worker's log of the current (or --attempt) attempt")
    logs.add_argument("name", help="the job")
    logs.add_argument("--rank", type=int, default=0, help="worker pod index (default 0)")
    logs.add_argument("--attempt", type=int, help="default: the current attempt")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("--tail", type=int, help="only the last N lines")
    for name, text in (("suspend", "stop the gang, keep the job"), ("resume", "start it again")):
        add_command(sub, name, text).add_argument("name", help="the job")
    submit = add_command(sub, "submit", "create a job from a preset (--dry-run prints it)")
    submit.add_argument(
        "--preset", required=True, choices=["tiny-cpu", "sd2-base-256", "sd2-base-512"]
    )
    submit.add_argument("--name", help="default: <preset>-<random>")
    submit.add_argument("--image", help="default: the trainer image of this version")
    submit.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="repeatable")
    submit.add_argument("--dry-run", action="store_true", help="print the object, create nothing")
    completion = add_command(sub, "completion", "a completion script for the kubectl-dtj command")
    completion.add_argument("shell", choices=["bash", "zsh"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubectl dtj", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kubectl-dtj {package_version()}")
    parser.add_argument("--kubeconfig", help="path to the kubeconfig (default: $KUBECONFIG)")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    parser.add_argument("-n", "--namespace", help="default: the context's namespace")
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def dispatch(conn: Connection | None, args: argparse.Namespace) -> int:
    if args.command == "completion":
        from diffusion_operator.kubectl_plugin.complete import SCRIPTS

        sys.stdout.write(SCRIPTS[args.shell])
        return 0
    if args.command == "submit":
        return run_submit(conn, args)
    assert conn is not None
    if args.command in ("suspend", "resume"):
        return run_set_suspend(conn, args.name, args.command == "suspend")
    handlers = {"list": run_list, "watch": run_watch, "describe": run_describe, "logs": run_logs}
    return handlers[args.command](conn, args)


def main(argv: list[str] | None = None) -> int:
    from kubernetes.client.exceptions import ApiException

    args = build_parser().parse_args(argv)
    offline = args.command == "completion" or (args.command == "submit" and args.dry_run)
    conn = None if offline else connect(args.kubeconfig, args.context, args.namespace)
    try:
        return dispatch(conn, args)
    except ApiException as error:
        print(f"error: {error.status} {error.reason}: {api_message(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def api_message(error: Any) -> str:
    import json

    try:
        return str(json.loads(error.body).get("message", error.body))
    except (TypeError, ValueError):
        return str(error.body)


if __name__ == "__main__":
    sys.exit(main())
