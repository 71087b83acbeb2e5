"""docs/cli.md carries every `kubectl dtj` command's --help text as the code prints it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from diffusion_operator.kubectl_plugin.cli import SUBCOMMANDS, build_parser

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def help_text(command: str | None) -> str:
    parser = build_parser()
    if command is None:
        return parser.format_help()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command].format_help()


@pytest.mark.parametrize("command", [None, *SUBCOMMANDS])
def test_cli_doc_has_the_current_help(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # the width docs/cli.md was written at
    title = "kubectl dtj" if command is None else f"kubectl dtj {command}"
    block = f"### `{title}`\n\n```\n{help_text(command).rstrip()}\n```\n"
    assert block in DOC.read_text(), f"docs/cli.md is stale for {title}: regenerate its help blocks"
