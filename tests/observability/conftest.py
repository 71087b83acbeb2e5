"""Observability fixtures: helm and promtool, built from Go modules and cached by
tools/testenv/build.sh (as for tests/packaging)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tool_bin_dir() -> Path:
    from testenv.controlplane import build_binaries

    return build_binaries()


@pytest.fixture(scope="session")
def helm(tool_bin_dir) -> Path:
    return tool_bin_dir / "helm"


@pytest.fixture(scope="session")
def promtool(tool_bin_dir) -> Path:
    path = tool_bin_dir / "promtool"
    if not path.is_file():
        pytest.skip(
            "promtool was not built (tools/testenv/build.sh logs why: `go install "
            "github.com/prometheus/prometheus/cmd/promtool` failed)"
        )
    return path
