"""Time to detect and to recover, per chaos case, on this machine.

Runs the chaos suite (`pytest -m chaos`, cluster and e2e tiers) with DTJ_CHAOS_REPORT set, so
every case appends the incidents of its job's status, and prints them as a markdown table:

    .venv/bin/python tools/bench/chaos_times.py [-- extra pytest args]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_suite(report: Path, extra: list[str]) -> int:
    command = [sys.executable, "-m", "pytest", "-m", "chaos", "-q", "-p", "no:cacheprovider"]
    env = {**os.environ, "DTJ_CHAOS_REPORT": str(report)}
    return subprocess.run([*command, *extra], cwd=ROOT, env=env, check=False).returncode


def format_table(lines: list[dict]) -> str:
    rows = [
        "| case | phase | incident | class | detect s | recover s | lost GPU-s |",
        "|---|---|---|---|---|---|---|",
    ]
    for line in lines:
        for incident in line["incidents"] or [{}]:
            rows.append(
                "| {case} | {phase} | {reason} | {klass} | {detect} | {recover} | {lost} |".format(
                    case=line["case"],
                    phase=line["phase"],
                    reason=incident.get("reason", "-"),
                    klass=incident.get("class", "-"),
                    detect=incident.get("detectSeconds", "-"),
                    recover=incident.get("recoverSeconds", "-"),
                    lost=incident.get("lostGpuSeconds", "-"),
                )
            )
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    extra = argv[1:] if argv[:1] == ["--"] else argv
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "chaos.jsonl"
        report.touch()
        code = run_suite(report, extra)
        lines = [json.loads(text) for text in report.read_text().splitlines() if text]
    print(format_table(lines))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
