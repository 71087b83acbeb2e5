"""Write helm/diffusion-operator/README.md from the chart: its description, the install, `helm
test`, and one row per documented value of values.yaml (the `# --` comment above a key, its
default). `make manifests` runs it; the test suite checks the committed file is current.

    python tools/packaging/chart_readme.py [--out helm/diffusion-operator/README.md]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART_DIR = Path(__file__).resolve().parents[2] / "helm" / "diffusion-operator"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_]+):")
DOC_START = re.compile(r"^ *# -- (?P<text>.*)$")
DOC_MORE = re.compile(r"^ *# (?P<text>.*)$")


def documented_values(lines: list[str]) -> list[tuple[str, str]]:
    """(dotted key, description) for every key right under a `# --` comment block."""
    found: list[tuple[str, str]] = []
    path: list[tuple[int, str]] = []
    doc: list[str] = []
    for line in lines:
        if start := DOC_START.match(line):
            doc = [start["text"]]
        elif doc and (more := DOC_MORE.match(line)):
            doc.append(more["text"])
        elif key := KEY.match(line):
            indent = len(key["indent"])
            path = [(i, k) for i, k in path if i < indent] + [(indent, key["key"])]
            if doc:
                found.append((".".join(k for _, k in path), " ".join(doc)))
            doc = []
        else:
            doc = []
    return found


def default_of(values: dict[str, Any], dotted: str) -> str:
    node: Any = values
    for key in dotted.split("."):
        node = node[key]
    return json.dumps(node, separators=(",", ":"))


def escape_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_readme() -> str:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    text = (CHART_DIR / "values.yaml").read_text()
    values = yaml.safe_load(text)
    rows = [
        f"| `{key}` | `{default_of(values, key)}` | {escape_cell(doc)} |"
        for key, doc in documented_values(text.splitlines())
    ]
    return (
        f"""# {chart["name"]} {chart["version"]} (app {chart["appVersion"]})

{chart["description"]}

<!-- Generated from Chart.yaml and values.yaml by tools/packaging/chart_readme.py. -->

```bash
helm install diffusion-operator helm/diffusion-operator -n diffusion-operator --create-namespace
helm test diffusion-operator -n diffusion-operator   # the CRD is served, an operator leads
kubectl apply -n diffusion-operator -f manifests/examples/tiny-cpu.yaml
```

Kubernetes {chart["kubeVersion"]}. The install guide is `docs/install.md`; monitoring is
`docs/observability.md`.

## Values

| key | default | description |
|---|---|---|
"""
        + "\n".join(rows)
        + "\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    readme = render_readme()
    if args.out:
        args.out.write_text(readme)
    else:
        sys.stdout.write(readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
