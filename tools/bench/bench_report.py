"""The training-step benchmark's outputs: the machine it ran on, a JSON file and a markdown
table (written after every row, so a run cut short still leaves its finished rows)."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

SIDES = ("stock", "ours")


def describe_machine(device: torch.device, peak_tflops: float | None) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "device": name,
        "peak_tflops": peak_tflops,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def format_number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}"


def format_side(side: dict[str, Any]) -> list[str]:
    if "error" in side:
        return ["error", "", "", ""]
    mfu = side.get("mfu")
    return [
        format_number(side["img_s"]),
        format_number(side["tflops"], 3),
        "-" if mfu is None else f"{100 * mfu:.1f}%",
        format_number(side.get("peak_gib"), 3),
    ]


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    header = (
        "| res | micro-batch | accum | variant | stock img/s | TFLOP/s | MFU | GiB "
        "| ours img/s | TFLOP/s | MFU | GiB | ours/stock | loader/core |"
    )
    lines = [header, "|" + "---|" * 14]
    for row in rows:
        keys = [str(row["res"]), str(row["micro_batch"]), str(row["accumulation"]), row["variant"]]
        if "skipped" in row:
            lines.append("| " + " | ".join([*keys, f"skipped: {row['skipped']}", *[""] * 9]) + " |")
            continue
        ratio = f"{row['ratio']:.3f}" if "ratio" in row else "-"
        loader = format_number(row["ours"].get("loader_samples_per_s_per_core"), 3)
        cells = [*keys, *format_side(row["stock"]), *format_side(row["ours"]), ratio, loader]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def error_lines(rows: list[dict[str, Any]]) -> list[str]:
    return [
        f"- {row['res']}:{row['micro_batch']}x{row['accumulation']}:{row['variant']} {side}: "
        f"{row[side]['error']}"
        for row in rows
        if "skipped" not in row
        for side in SIDES
        if "error" in row[side]
    ]


def render_markdown(machine: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    about = ", ".join(f"{key} {value}" for key, value in machine.items())
    lines = [f"Machine: {about}", "", *table_lines(rows)]
    if errors := error_lines(rows):
        lines += ["", "Errors:", *errors]
    return "\n".join(lines) + "\n"


def write_reports(out: Path, machine: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    payload = {"machine": machine, "rows": rows}
    (out / "train_step_bench.json").write_text(json.dumps(payload, indent=1))
    (out / "train_step_bench.md").write_text(render_markdown(machine, rows))


def print_table(machine: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    print()
    print(render_markdown(machine, rows), end="")
