"""Training-step benchmark: our trainer's full step side by side with the stock diffusers step.

Ours is the real `TrainingLoop.train_step` (MDS loader of precomputed latents, noise drawn in
the loader workers, FSDP2 U-Net with bf16 mixed precision, gradient accumulation, clipping,
fused AdamW, EMA) on a world-size-1 process group; the stock step is `stock_step.py` (plain
diffusers U-Net, bf16 autocast, fused AdamW, random tensors), in the same process on the same
device at the same micro-batch. Each side is timed as the median of `--iters` steps after
`--warmup`, synchronised. On a GPU the sides run one after the other (one model in memory at a
time, the stock result reused by rows that share it); on CPU (`--tiny`, usually a shared
machine) both are built side by side and timed alternately, so load changes hit both.
TFLOP/s and MFU use the U-Net's training FLOPs per image. Rows run in priority order until
`--budget-s` is spent; the rest are listed as skipped. Prints a table last and writes
`train_step_bench.json` and `train_step_bench.md` to `--out` ($OUT).

    python tools/bench/train_step.py --tiny            # CPU rehearsal, tiny U-Net
    python tools/bench/train_step.py                   # GPU: SD-2-base, every variant
    python tools/bench/train_step.py --only 256:16x8:compile+cl,512:32:compile+cl
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from bench_plan import GPU_PLAN, TINY_COMPILE_PLAN, TINY_PLAN, Case, parse_case, training_overrides
from bench_report import describe_machine, print_table, write_reports
from bench_support import time_interleaved, time_steps, write_latent_dataset
from loader_bench import measure_loader
from stock_step import build_stock_step

GPU_BUDGET_S = 360.0


@dataclass
class OurStep:
    step: Any  # TrainingLoop.train_step
    flops_per_image: float
    data: Path


def make_config(data: Path, unet: str, case: Case, ckpt: Path, num_workers: int) -> Any:
    from diffusion_trainer.config import TrainerConfig

    ema = {"enabled": "noema" not in case.tokens, "decay": 0.9999}
    training = {
        "maxSteps": 10**6,
        "warmupSteps": 0,
        "precision": "bf16",
        "gradClipNorm": 1.0,
        **training_overrides(case),
    }
    return TrainerConfig.model_validate(
        {
            "model": {"unet": unet, "ema": ema},
            "data": {
                "train": {"local": str(data), "resolution": case.res, "numWorkers": num_workers}
            },
            "training": training,
            "checkpoint": {"uri": str(ckpt)},
            "eval": {"intervalSteps": 0},
            "metrics": {"enabled": False},
        }
    )


def loader_workers(device: torch.device) -> int:
    # On CPU, loader workers would compete with the compute for the few cores.
    return min(8, (os.cpu_count() or 2) // 2) if device.type == "cuda" else 0


def build_our_step(runtime: Any, args: argparse.Namespace, case: Case, workdir: Path) -> OurStep:
    from diffusion_trainer.assemble import build_components
    from diffusion_trainer.model import load_unet_config
    from diffusion_trainer.preemption import StopRequest
    from diffusion_trainer.train import TrainingLoop

    text_dim = int(load_unet_config(args.unet)["cross_attention_dim"])
    latent_hw = case.res // 8
    num_samples = case.images_per_step * (2 * (args.warmup + args.iters) + 2)
    data = write_latent_dataset(workdir, num_samples, latent_hw, text_dim)
    ckpt = workdir / f"ckpt-{time.monotonic_ns()}"
    config = make_config(data, args.unet, case, ckpt, loader_workers(runtime.device))
    loop = TrainingLoop(config, runtime, build_components(config, runtime), StopRequest(), [])
    flops = flops_per_image(args.unet, case.res)
    return OurStep(step=loop.train_step, flops_per_image=flops, data=data)


def side_result(images: int, seconds: float, flops_per_image: float, peak: float | None) -> dict:
    tflops = flops_per_image * images / seconds / 1e12
    result: dict[str, Any] = {
        "img_s": images / seconds,
        "step_ms": seconds * 1e3,
        "tflops": tflops,
    }
    if peak:
        result["mfu"] = tflops / peak
    return result


def peak_memory_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 1)


def reset_peak_memory(device: torch.device) -> None:
    """Free the previous row's models (compiled code holds them too) before measuring."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def time_stock(runtime: Any, args: argparse.Namespace, case: Case, flops: float) -> dict:
    device = runtime.device
    reset_peak_memory(device)
    step = build_stock_step(args.unet, device, case.res, case.micro_batch, case.stock_variant)
    seconds = time_steps(step, device, args.iters, args.warmup)
    result = side_result(case.micro_batch, seconds, flops, args.peak_tflops)
    result["peak_gib"] = peak_memory_gib(device)
    return result


def time_ours(runtime: Any, args: argparse.Namespace, case: Case, workdir: Path) -> dict:
    device = runtime.device
    reset_peak_memory(device)
    ours = build_our_step(runtime, args, case, workdir)
    seconds = time_steps(ours.step, device, args.iters, args.warmup)
    result = side_result(case.images_per_step, seconds, ours.flops_per_image, args.peak_tflops)
    result["peak_gib"] = peak_memory_gib(device)
    result["loader_samples_per_s_per_core"] = measure_loader(ours.data, case.micro_batch)
    return result


def guarded(measure: Any, *measure_args: Any) -> dict:
    """One side's result, or its error: a failing side must not lose the rest of the run."""
    try:
        return measure(*measure_args)
    except Exception as error:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"error": repr(error)[:400]}


def flops_per_image(unet: str, res: int) -> float:
    from diffusion_trainer.flops import count_train_flops_per_image
    from diffusion_trainer.model import load_unet_config

    config = load_unet_config(unet)
    text = (77, int(config["cross_attention_dim"]))
    return count_train_flops_per_image(config, (4, res // 8, res // 8), text)


def bench_sequential(
    runtime: Any, args: argparse.Namespace, case: Case, workdir: Path, stock_cache: dict
) -> dict:
    """GPU: the stock step (or its earlier result at the same shape), freed, then ours."""
    key = (case.res, case.micro_batch, case.stock_variant)
    if key not in stock_cache:
        flops = flops_per_image(args.unet, case.res)
        stock_cache[key] = guarded(time_stock, runtime, args, case, flops)
    return {"stock": stock_cache[key], "ours": guarded(time_ours, runtime, args, case, workdir)}


def bench_interleaved(
    runtime: Any, args: argparse.Namespace, case: Case, workdir: Path, _: dict
) -> dict:
    """CPU: both steps built side by side and timed alternately (ABBA)."""
    ours = build_our_step(runtime, args, case, workdir)
    stock = build_stock_step(
        args.unet, runtime.device, case.res, case.micro_batch, case.stock_variant
    )

    def stock_accumulated() -> None:  # the same images per timed call as ours
        for _ in range(case.accumulation):
            stock()

    seconds = time_interleaved(
        {"stock": stock_accumulated, "ours": ours.step}, runtime.device, args.iters, args.warmup
    )
    row = {
        side: side_result(case.images_per_step, seconds[side], ours.flops_per_image, None)
        for side in seconds
    }
    row["ours"]["loader_samples_per_s_per_core"] = measure_loader(ours.data, case.micro_batch)
    return row


def run_case(
    runtime: Any, args: argparse.Namespace, case: Case, workdir: Path, stock_cache: dict
) -> dict[str, Any]:
    row: dict[str, Any] = case_keys(case)
    bench = bench_interleaved if args.interleave else bench_sequential
    try:
        row.update(bench(runtime, args, case, workdir, stock_cache))
    except Exception as error:  # one failing case must not lose the others
        row.update(stock={"error": repr(error)[:400]}, ours={"error": repr(error)[:400]})
    if "img_s" in row["stock"] and "img_s" in row["ours"]:
        row["ratio"] = row["ours"]["img_s"] / row["stock"]["img_s"]
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny U-Net on CPU")
    parser.add_argument("--compile", action="store_true", help="with --tiny: compiled rows too")
    parser.add_argument("--only", default="", help="comma list of res:batch[xaccum]:variant")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting new rows")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override device peak")
    parser.add_argument(
        "--interleave",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time both steps alternately (default: on for --tiny, off on GPU)",
    )
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args(argv)
    args.unet = "tiny" if args.tiny else "sd2-base"
    args.iters = args.iters or (4 if args.tiny else 12)
    args.warmup = args.warmup or (1 if args.tiny else 4)
    args.budget_s = args.budget_s or (float("inf") if args.tiny else GPU_BUDGET_S)
    if args.interleave is None:
        args.interleave = args.tiny
    return args


def select_plan(args: argparse.Namespace) -> list[Case]:
    if args.only:
        return [parse_case(text) for text in args.only.split(",")]
    if args.tiny:
        return [*TINY_PLAN, *(TINY_COMPILE_PLAN if args.compile else ())]
    return list(GPU_PLAN)


def configure_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tiny:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU variant even on a GPU machine
    from diffusion_trainer.distributed import init_runtime, shutdown_runtime
    from diffusion_trainer.flops import peak_flops_per_device

    runtime = init_runtime()
    configure_device(runtime.device)
    peak = args.peak_tflops or (peak_flops_per_device(runtime.device) or 0) / 1e12
    args.peak_tflops = peak or None
    machine = describe_machine(runtime.device, args.peak_tflops)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    stock_cache: dict = {}
    with tempfile.TemporaryDirectory(prefix="dtj-bench-") as workdir:
        for case in select_plan(args):
            left_s = args.budget_s - (time.monotonic() - started)
            if left_s < case.min_seconds:
                rows.append({**case_keys(case), "skipped": f"time budget {args.budget_s:.0f} s"})
            else:
                rows.append(run_case(runtime, args, case, Path(workdir), stock_cache))
            print(json.dumps(rows[-1]), flush=True)
            write_reports(out, machine, rows)
    shutdown_runtime()
    print_table(machine, rows)
    print(f"\nJSON and markdown: {out}/train_step_bench.{{json,md}}")
    return 0


def case_keys(case: Case) -> dict[str, Any]:
    return {
        "res": case.res,
        "micro_batch": case.micro_batch,
        "accumulation": case.accumulation,
        "variant": case.variant,
    }


if __name__ == "__main__":
    sys.exit(main())
