"""The `dtj` command: run the operator, print the CRD, work with datasets, evaluate.
Jobs on a cluster: `kubectl dtj` (diffusion_operator.kubectl_plugin)."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version

from diffusion_operator.selfcheck import add_selfcheck_parser


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dtj", description="Diffusion Operator")
    parser.add_argument(
        "--version", action="version", version=f"dtj {version('diffusion-operator')}"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    operator = sub.add_parser("operator", help="run the operator (settings: DTJ_OPERATOR_* env)")
    operator.add_argument("--verbose", action="store_true")
    operator.set_defaults(func=run_operator)
    crd = sub.add_parser("crd", help="print the CustomResourceDefinition")
    crd.set_defaults(func=print_crd)
    sub.add_parser("data", help="dataset tools (dtj data --help)", add_help=False)
    sub.add_parser("eval", help="FID/CLIP of a checkpoint (dtj eval --help)", add_help=False)
    add_selfcheck_parser(sub)
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
