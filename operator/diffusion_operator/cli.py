"""The `dtj` command: run the operator, print the CRD, work with datasets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TOOLS_DIR = Path(__file__).resolve().parents[2] / "tools"


def run_operator(args: argparse.Namespace) -> int:
    import kopf

    from diffusion_operator import handlers
    from diffusion_operator.settings import identity, load_settings

    settings = load_settings()
    log_format = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(verbose=args.verbose, log_format=log_format)
    # kopf runs the process; the controller watches, elects a leader and serves the probes.
    # An explicit identity: kopf's default asks the passwd database for the user, which an
    # arbitrary runAsUser (one the image does not list) is missing from.
    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=True,
        identity=identity(settings),  # type: ignore[arg-type]  # kopf's NewType of str
    )
    del handlers  # imported for its registrations
    return 0


def print_crd(_: argparse.Namespace) -> int:
    from diffusion_operator.crd import render_crd_yaml

    sys.stdout.write(render_crd_yaml())
    return 0


def print_local_logs(args: argparse.Namespace) -> int:
    """Logs the local node agent keeps per pod (local mode only; see docs/local.md)."""
    sys.path.insert(0, str(TOOLS_DIR))  # the agent lives in tools/, beside the packages
    from localnode.logs import list_pod_logs, select_log, state_dir_from_env

    state_dir = args.state_dir or state_dir_from_env()
    logs = list_pod_logs(state_dir, args.job, args.namespace)
    entry = select_log(logs, args.rank, args.attempt)
    if entry is None:
        where = f"{args.namespace}/{args.job} rank {args.rank}"
        print(f"no local logs for {where} under {state_dir}", file=sys.stderr)
        return 1
    sys.stdout.write(entry.path.read_text(errors="replace"))
    return 0


def add_logs_parser(sub: argparse._SubParsersAction) -> None:
    logs = sub.add_parser("logs", help="print a local-mode worker's log (dtj logs JOB --rank N)")
    logs.add_argument("job")
    logs.add_argument("--rank", type=int, default=0, help="node rank (completion index)")
    logs.add_argument("--attempt", type=int, default=None, help="default: the latest")
    logs.add_argument("-n", "--namespace", default="default")
    logs.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="the agent's state dir (default: $DTJ_LOCALNODE_DIR or /tmp/dtj-demo/localnode)",
    )
    logs.set_defaults(func=print_local_logs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dtj", description="Diffusion Operator")
    sub = parser.add_subparsers(dest="command", required=True)
    operator = sub.add_parser("operator", help="run the operator (settings: DTJ_OPERATOR_* env)")
    operator.add_argument("--verbose", action="store_true")
    operator.set_defaults(func=run_operator)
    crd = sub.add_parser("crd", help="print the CustomResourceDefinition")
    crd.set_defaults(func=print_crd)
    sub.add_parser("data", help="dataset tools (dtj data --help)", add_help=False)
    sub.add_parser("eval", help="FID/CLIP of a checkpoint (dtj eval --help)", add_help=False)
    add_logs_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["data"]:
        from diffusion_trainer.cli import run_data_command

        return run_data_command(argv[1:])
    if argv[:1] == ["eval"]:
        from diffusion_trainer.eval_cli import run_eval_command

        return run_eval_command(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
