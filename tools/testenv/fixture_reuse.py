"""Reuse the cluster tier's fixtures in other tiers: tests/cluster/conftest.py is not visible
from a sibling test folder, and copies would drift."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

CLUSTER_CONFTEST = Path(__file__).resolve().parents[2] / "tests" / "cluster" / "conftest.py"


def load_cluster_fixtures(module_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, CLUSTER_CONFTEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
