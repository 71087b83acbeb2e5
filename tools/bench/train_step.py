"""Training-step benchmark: our trainer's step side by side with the stock diffusers step.

Ours is the real `TrainingLoop.train_step` (MDS data loader of precomputed latents, FSDP2
U-Net with bf16 mixed precision, loss, backward, gradient clipping, fused AdamW, EMA) on a
world-size-1 process group; the stock step is `../shared/baselines/unet_stock_step.py`
(plain diffusers U-Net, bf16 autocast, fused AdamW, random tensors), imported and run in the
same process, same device, same batch shapes. Both are timed as the median of `--iters` steps after
`--warmup`, synchronised. On GPU the stock side is the baseline's own `bench` (its numbers as
published), then ours; with `--tiny` (CPU, usually a shared machine) both steps are built side
by side and timed alternately, so load changes hit both. TFLOP/s and MFU use the U-Net's
training FLOPs per image counted once on the meta device. Prints a table last; writes JSON to
`--out` ($OUT). `--loader-only` measures just the data path for SD2-shaped samples.

    python tools/bench/train_step.py --tiny            # CPU smoke test, tiny U-Net
    python tools/bench/train_step.py                   # GPU: SD-2-base at 256 and 512 px
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from bench_support import (  # the script's own folder is on sys.path
    bench_loader_only,
    measure_loader,
    print_table,
    time_interleaved,
    time_steps,
    write_latent_dataset,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
BASELINE = REPO_ROOT.parent / "shared" / "baselines" / "unet_stock_step.py"
GPU_PLAN = [
    (256, 64, "eager+cl"),
    (256, 128, "eager+cl"),
    (256, 128, "compile+cl"),
    (512, 32, "eager+cl"),
    (512, 32, "compile+cl"),
]
TINY_PLAN = [(256, 8, "eager")]


def load_baseline() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unet_stock_step", BASELINE)
    if spec is None or spec.loader is None:
        raise SystemExit(f"stock baseline not found at {BASELINE}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_config(data: Path, unet: str, res: int, *, batch: int, variant: str, ckpt: Path) -> Any:
    from diffusion_trainer.config import TrainerConfig

    # Loader workers would compete with the compute for the few cores of a CPU run.
    workers = 4 if torch.cuda.is_available() else 0
    return TrainerConfig.model_validate(
        {
            "model": {"unet": unet, "ema": {"decay": 0.9999}},
            "data": {"train": {"local": str(data), "resolution": res, "numWorkers": workers}},
            "training": {
                "globalBatchSize": batch,
                "microBatchSize": batch,
                "maxSteps": 10**6,
                "warmupSteps": 0,
                "precision": "bf16",
                "compile": variant.startswith("compile"),
                "channelsLast": "cl" in variant,
                "gradClipNorm": 1.0,
            },
            "checkpoint": {"uri": str(ckpt)},
        }
    )


@dataclass(frozen=True)
class Case:
    """One row of the plan: resolution (px), per-device batch, variant name."""

    res: int
    batch: int
    variant: str


@dataclass
class OurStep:
    step: Any  # TrainingLoop.train_step
    flops_per_image: float
    data: Path
    loop: Any


def build_our_step(runtime: Any, args: argparse.Namespace, case: Case, workdir: Path) -> OurStep:
    from diffusion_trainer.assemble import build_components
    from diffusion_trainer.flops import count_train_flops_per_image
    from diffusion_trainer.model import load_unet_config
    from diffusion_trainer.preemption import StopRequest
    from diffusion_trainer.train import TrainingLoop

    unet_name = "tiny" if args.tiny else "sd2-base"
    text_dim = int(load_unet_config(unet_name)["cross_attention_dim"])
    latent_hw = case.res // 8
    num_samples = case.batch * (2 * (args.warmup + args.iters) + 2)
    data = write_latent_dataset(workdir, num_samples, latent_hw, text_dim)
    config = make_config(
        data, unet_name, case.res, batch=case.batch, variant=case.variant, ckpt=workdir / "ckpt"
    )
    if config.training.compile:
        torch._dynamo.reset()
    loop = TrainingLoop(config, runtime, build_components(config, runtime), StopRequest(), [])
    flops = count_train_flops_per_image(
        dict(loop.c.unet_config), (4, latent_hw, latent_hw), (77, text_dim)
    )
    return OurStep(step=loop.train_step, flops_per_image=flops, data=data, loop=loop)


def build_stock_step(
    baseline: ModuleType, args: argparse.Namespace, device: torch.device, case: Case
) -> Any:
    """The baseline's own model and `step_fn`, set up exactly as its `bench` does."""
    config = baseline.TINY if args.tiny else baseline.SD2_BASE
    torch.manual_seed(0)
    channels_last = "cl" in case.variant
    model = baseline.make(config, device, channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    latent_hw = case.res // 8
    x = torch.randn(case.batch, 4, latent_hw, latent_hw, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    noise = torch.randn_like(x)
    t = torch.randint(0, 1000, (case.batch,), device=device)
    c = torch.randn(case.batch, 77, config["cross_attention_dim"], device=device)
    if "compile" in case.variant:
        torch._dynamo.reset()
        model = torch.compile(model, dynamic=False)
    return lambda: baseline.step_fn(model, optimizer, x, t, c, noise)


def side_result(batch: int, seconds: float, flops_per_image: float) -> dict[str, Any]:
    return {
        "img_s": batch / seconds,
        "step_ms": seconds * 1e3,
        "gflop_per_img": flops_per_image / 1e9,
        "tflops": flops_per_image * batch / seconds / 1e12,
    }


def bench_interleaved(
    baseline: ModuleType, runtime: Any, args: argparse.Namespace, case: Case, workdir: Path
) -> dict[str, Any]:
    """Both steps built side by side and timed alternately (the CPU comparison)."""
    ours = build_our_step(runtime, args, case, workdir)
    stock = build_stock_step(baseline, args, runtime.device, case)
    seconds = time_interleaved(
        {"stock": stock, "ours": ours.step}, runtime.device, args.iters, args.warmup
    )
    # Same architecture on both sides: the same FLOPs per image.
    row = {side: side_result(case.batch, seconds[side], ours.flops_per_image) for side in seconds}
    row["ours"]["loader_samples_per_s_per_core"] = measure_loader(ours.data, case.batch)
    return row


def bench_sequential(
    baseline: ModuleType, runtime: Any, args: argparse.Namespace, case: Case, workdir: Path
) -> dict[str, Any]:
    """The stock `bench` as published, freed, then ours (GPU: one model in memory at a time)."""
    row: dict[str, Any] = {}
    try:
        row["stock"] = baseline.bench(
            baseline.TINY if args.tiny else baseline.SD2_BASE,
            runtime.device,
            case.res,
            case.batch,
            case.variant,
            iters=args.iters,
            warmup=args.warmup,
        )
    except Exception as error:  # keep going: the other side still has a number
        row["stock"] = {"error": repr(error)[:300]}
    gc.collect()
    try:
        ours = build_our_step(runtime, args, case, workdir)
        if runtime.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = time_steps(ours.step, runtime.device, args.iters, args.warmup)
        row["ours"] = side_result(case.batch, seconds, ours.flops_per_image)
        if runtime.device.type == "cuda":
            row["ours"]["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
        row["ours"]["loader_samples_per_s_per_core"] = measure_loader(ours.data, case.batch)
        del ours
    except Exception as error:
        row["ours"] = {"error": repr(error)[:300]}
    gc.collect()
    if runtime.device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def run_variant(
    baseline: ModuleType,
    runtime: Any,
    args: argparse.Namespace,
    case: Case,
    *,
    workdir: Path,
    peak_tflops: float | None,
) -> dict[str, Any]:
    row: dict[str, Any] = {"res": case.res, "bs": case.batch, "variant": case.variant}
    bench = bench_interleaved if args.interleave else bench_sequential
    try:
        row.update(bench(baseline, runtime, args, case, workdir))
    except Exception as error:  # one failing variant must not lose the others
        row.update(stock={"error": repr(error)[:300]}, ours={"error": repr(error)[:300]})
    for side in ("stock", "ours"):
        if peak_tflops and "tflops" in row[side]:
            row[side]["mfu"] = row[side]["tflops"] / peak_tflops
    if "img_s" in row["stock"] and "img_s" in row["ours"]:
        row["ratio"] = row["ours"]["img_s"] / row["stock"]["img_s"]
    return row


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny U-Net on CPU")
    parser.add_argument("--only", default="", help="comma list of res:bs:variant")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--peak-tflops", type=float, default=None, help="override device peak")
    parser.add_argument(
        "--interleave",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time both steps alternately (default: on for --tiny, off on GPU)",
    )
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument(
        "--loader-only", action="store_true", help="only the data path: SD2-shaped samples/s/core"
    )
    args = parser.parse_args()
    args.iters = args.iters or (4 if args.tiny else 15)
    args.warmup = args.warmup or (1 if args.tiny else 5)
    if args.interleave is None:
        args.interleave = args.tiny
    return args


def main() -> int:
    args = parse_args()
    if args.loader_only:
        return bench_loader_only(Path(args.out))
    if args.tiny:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU variant even on a GPU machine
    from diffusion_trainer.distributed import init_runtime, shutdown_runtime
    from diffusion_trainer.flops import peak_flops_per_device

    baseline = load_baseline()
    runtime = init_runtime()
    device = runtime.device
    peak = args.peak_tflops or ((peak_flops_per_device(device) or 0) / 1e12) or None
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    device_name += f", {torch.get_num_threads()} threads, torch {torch.__version__}"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    plan = TINY_PLAN if args.tiny else GPU_PLAN
    if args.only:
        plan = [(int(r), int(b), v) for r, b, v in (x.split(":") for x in args.only.split(","))]
    rows = []
    out = Path(args.out) / "train_step_bench.json"
    with tempfile.TemporaryDirectory(prefix="dtj-bench-") as workdir:
        for item in plan:
            case = Case(*item)
            rows.append(
                run_variant(baseline, runtime, args, case, workdir=Path(workdir), peak_tflops=peak)
            )
            print(json.dumps(rows[-1]), flush=True)
            out.write_text(json.dumps({"device": device_name, "rows": rows}, indent=1))
    shutdown_runtime()
    print_table(rows, device_name)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
