"""Projected step time and scaling efficiency of SD-2-base training on 8 to 128 GPUs.

A paper model, not a measurement: it takes one measured single-GPU time per micro-batch and
adds the time of the collectives each sharding strategy needs per optimizer step, so that the
multi-GPU runs have a prediction to be checked against.

Strategies (N GPUs, nodes of G GPUs, P parameters, M micro-batches per optimizer step):

- `fsdp`: FSDP2 with every parameter sharded over all N GPUs. With the trainer's default
  `reshardAfterForward: false` the gathered bf16 weights stay through all micro-batches of a
  step: one all-gather of 2P bytes per step. With `reshard_after_forward=True` each
  micro-batch gathers twice (forward and backward): 2M all-gathers. Gradients are
  reduce-scattered in fp32 once per step (4P bytes; the trainer syncs only the last
  micro-batch). On one node the ring runs over NVLink; beyond one node it spans the network.
- `hsdp`: shard within a node, replicate across the N/G nodes. The same all-gathers and
  reduce-scatter as `fsdp` but over G GPUs on NVLink, plus an fp32 all-reduce of each GPU's
  gradient shard (4P/G bytes) with the same-index GPU of every other node, through its own NIC.

Cost of one collective (ring algorithm, nccl-tests' "bus bandwidth" B per GPU, payload S
bytes = the whole gathered or reduced buffer, p ranks):

    all-gather, reduce-scatter:  (p - 1) / p * S / B
    all-reduce:              2 * (p - 1) / p * S / B

plus a latency per call, paid once per FSDP unit (each unit issues its own collective):
10 us on NVLink, 20 us * log2(p) once a ring leaves the node.

Per optimizer step:

    compute   = M * measured micro-batch time
    window    = the compute that runs while collectives are in flight (below)
    exposed   = max(0, comm - overlap_fraction * window)   # FSDP2 prefetches the next unit
    step      = compute + exposed
    efficiency = compute / step

The window is all M micro-batches when weights are resharded after forward (each one gathers),
but one micro-batch when they are kept gathered: the all-gathers run under the first
micro-batch's forward and the reduce-scatter (and HSDP's all-reduce) under the last one's
backward; the micro-batches in between have nothing to hide.

Efficiency is weak scaling: the per-GPU micro-batch is fixed, so it equals the per-GPU
throughput at N GPUs over the single-GPU throughput. With a target global batch, M is
target / (N * micro-batch), at least 1 (the global batch then exceeds the target).

Assumptions to replace with measurements (nccl-tests on the target nodes, the trainer's own
`images_per_s` under torchrun):

- The measured time is the whole single-GPU step; all of it is counted per micro-batch, so the
  optimizer (once per step, on 1/N of the weights when sharded) is slightly over-counted.
- `overlap_fraction` (default 0.8) is a guess at how much of the compute hides communication.
- A flat ring across nodes runs at one NIC's bandwidth per GPU: the slowest hop bounds a ring.
  NCCL runs one ring per NIC, so a flat ring can approach G times that (`flat_ring_nics`);
  with that, flat FSDP moves fewer bytes over the network than HSDP (6P against 8P per step).
- Latency grows with log2(p); NCCL's ring all-gather and reduce-scatter really grow with p.

    python tools/bench/scaling_projection.py --step-ms 45 --micro-batch 32
    python tools/bench/scaling_projection.py --from-json "$OUT/train_step_bench.json" --out .
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

SD2_BASE_PARAMS = 865_910_724
# `fsdpUnits: layers` on SD2: 38 ResNet/transformer layers + 9 blocks + the root.
SD2_FSDP_UNITS = 48
DEFAULT_OVERLAP_FRACTION = 0.8
DEFAULT_GPUS = (8, 64, 128)
DEFAULT_GLOBAL_BATCH = 2048
BF16_BYTES = 2
FP32_BYTES = 4
OUTPUT_NAME = "scaling_projection.json"


@dataclass(frozen=True)
class HardwareProfile:
    """One kind of node: its GPU count and the bandwidth and latency of its two links.

    Bandwidths are achievable bus bandwidths per GPU in GB/s (1e9 bytes/s), the figure
    nccl-tests reports, not link peaks:

    - a100: DGX/HGX A100, NVLink 3 (300 GB/s per direction peak; ring collectives reach about
      230) and one 200 Gb/s HDR InfiniBand NIC per GPU (25 GB/s peak, about 22 achieved).
    - h100: DGX/HGX H100, NVLink 4 (450 GB/s per direction peak; rings reach about 360, NVLS
      all-reduce more) and one 400 Gb/s NDR NIC per GPU (50 GB/s peak, about 45 achieved).

    Latencies per collective call: `intra_node_latency_s` on NVLink, and
    `inter_node_latency_s` times log2(ranks) for rings that cross the network.
    """

    name: str
    gpus_per_node: int
    intra_node_bus_gbytes_per_s: float
    inter_node_bus_gbytes_per_s: float
    intra_node_latency_s: float = 10e-6
    inter_node_latency_s: float = 20e-6


A100 = HardwareProfile("a100", 8, 230.0, 22.0)
H100 = HardwareProfile("h100", 8, 360.0, 45.0)
HARDWARE_PROFILES = {profile.name: profile for profile in (A100, H100)}


class Strategy(StrEnum):
    FSDP = "fsdp"
    HSDP = "hsdp"


class CollectiveKind(StrEnum):
    ALL_GATHER = "all_gather"
    REDUCE_SCATTER = "reduce_scatter"
    ALL_REDUCE = "all_reduce"


class Link(StrEnum):
    NVLINK = "nvlink"  # all ranks in one node
    FLAT = "flat"  # one ring over the GPUs of several nodes: bounded by its network hops
    RAIL = "rail"  # one GPU per node (HSDP's replicas): every byte through that GPU's NIC


# An all-reduce is a reduce-scatter then an all-gather: twice the ring traffic.
RING_PASSES = {
    CollectiveKind.ALL_GATHER: 1,
    CollectiveKind.REDUCE_SCATTER: 1,
    CollectiveKind.ALL_REDUCE: 2,
}


@dataclass(frozen=True)
class Collective:
    """One collective over the whole model (all FSDP units), repeated `count_per_step` times."""

    kind: CollectiveKind
    tensor: str
    link: Link
    num_ranks: int
    payload_bytes: int
    count_per_step: int

    @property
    def payload_bytes_per_step(self) -> int:
        return self.payload_bytes * self.count_per_step

    @property
    def sent_bytes_per_gpu_per_step(self) -> float:
        """What each GPU puts on its link in a ring: the payload less its own share."""
        ring_share = (self.num_ranks - 1) / self.num_ranks
        return RING_PASSES[self.kind] * ring_share * self.payload_bytes_per_step


@dataclass(frozen=True)
class CollectiveTime:
    collective: Collective
    bandwidth_s: float
    latency_s: float

    @property
    def total_s(self) -> float:
        return self.bandwidth_s + self.latency_s


@dataclass(frozen=True)
class Projection:
    num_gpus: int
    hardware: str
    strategy: Strategy
    micro_batch: int
    num_micro_batches: int
    global_batch: int
    compute_s: float
    overlap_window_s: float
    comm_s: float
    exposed_comm_s: float
    step_s: float
    images_per_s: float
    efficiency: float
    network_bytes_per_gpu_per_step: float
    collectives: tuple[CollectiveTime, ...]


@dataclass(frozen=True)
class MeasuredStep:
    """One single-GPU measurement: `step_s` for one micro-batch of `micro_batch` images."""

    step_s: float
    micro_batch: int
    resolution: int | None = None


def count_micro_batches(target_global_batch: int, num_gpus: int, micro_batch: int) -> int:
    """Gradient-accumulation steps that reach the target global batch, at least one."""
    return max(1, target_global_batch // (num_gpus * micro_batch))


def split_shard_group(strategy: Strategy, num_gpus: int, gpus_per_node: int) -> tuple[int, int]:
    """(GPUs that shard the weights, replicas of that group)."""
    if strategy is Strategy.FSDP or num_gpus <= gpus_per_node:
        return num_gpus, 1
    if num_gpus % gpus_per_node:
        raise ValueError(f"hsdp needs whole nodes: {num_gpus} GPUs, {gpus_per_node} per node")
    return gpus_per_node, num_gpus // gpus_per_node


def collective_bytes_per_step(
    strategy: Strategy,
    num_gpus: int,
    *,
    gpus_per_node: int,
    num_params: int = SD2_BASE_PARAMS,
    num_micro_batches: int = 1,
    keep_gathered: bool = True,
) -> tuple[Collective, ...]:
    """The collectives of one optimizer step; none on one GPU (nothing to exchange)."""
    if num_gpus < 1 or num_micro_batches < 1:
        raise ValueError("num_gpus and num_micro_batches must be at least 1")
    shard_size, num_replicas = split_shard_group(strategy, num_gpus, gpus_per_node)
    collectives: list[Collective] = []
    if shard_size > 1:
        shard_link = Link.NVLINK if shard_size <= gpus_per_node else Link.FLAT
        num_gathers = 1 if keep_gathered else 2 * num_micro_batches
        collectives += [
            Collective(
                CollectiveKind.ALL_GATHER,
                "bf16 weights",
                shard_link,
                shard_size,
                BF16_BYTES * num_params,
                num_gathers,
            ),
            Collective(
                CollectiveKind.REDUCE_SCATTER,
                "fp32 gradients",
                shard_link,
                shard_size,
                FP32_BYTES * num_params,
                1,
            ),
        ]
    if num_replicas > 1:
        # FSDP pads every shard to the same size: round the shard up.
        shard_bytes = -(-FP32_BYTES * num_params // shard_size)
        collectives.append(
            Collective(
                CollectiveKind.ALL_REDUCE,
                "fp32 gradient shard",
                Link.RAIL,
                num_replicas,
                shard_bytes,
                1,
            )
        )
    return tuple(collectives)


def link_bandwidth_bytes_per_s(link: Link, hardware: HardwareProfile, flat_ring_nics: int) -> float:
    if link is Link.NVLINK:
        return hardware.intra_node_bus_gbytes_per_s * 1e9
    if link is Link.RAIL:
        return hardware.inter_node_bus_gbytes_per_s * 1e9
    # A flat ring spread over more NICs is still bounded by the NVLink hops it also takes.
    spread = hardware.inter_node_bus_gbytes_per_s * flat_ring_nics
    return min(spread, hardware.intra_node_bus_gbytes_per_s) * 1e9


def call_latency_s(link: Link, num_ranks: int, hardware: HardwareProfile) -> float:
    if link is Link.NVLINK:
        return hardware.intra_node_latency_s
    return hardware.inter_node_latency_s * math.log2(num_ranks)


def time_collective(
    collective: Collective, hardware: HardwareProfile, *, num_units: int, flat_ring_nics: int = 1
) -> CollectiveTime:
    bandwidth = link_bandwidth_bytes_per_s(collective.link, hardware, flat_ring_nics)
    latency_per_pass = num_units * call_latency_s(collective.link, collective.num_ranks, hardware)
    return CollectiveTime(
        collective=collective,
        bandwidth_s=collective.sent_bytes_per_gpu_per_step / bandwidth,
        latency_s=collective.count_per_step * latency_per_pass,
    )


def project_step(
    micro_batch_compute_s: float,
    hardware: HardwareProfile,
    strategy: Strategy,
    num_gpus: int,
    *,
    micro_batch: int,
    num_micro_batches: int = 1,
    num_params: int = SD2_BASE_PARAMS,
    keep_gathered: bool = True,
    overlap_fraction: float = DEFAULT_OVERLAP_FRACTION,
    num_units: int = SD2_FSDP_UNITS,
    flat_ring_nics: int = 1,
) -> Projection:
    """Step time and efficiency at `num_gpus` from one GPU's time per micro-batch."""
    if not 0.0 <= overlap_fraction <= 1.0:
        raise ValueError(f"overlap_fraction must be in [0, 1], got {overlap_fraction}")
    if micro_batch_compute_s <= 0 or micro_batch < 1 or num_units < 1 or flat_ring_nics < 1:
        raise ValueError("compute time, micro-batch, units and NICs must be positive")
    collectives = collective_bytes_per_step(
        strategy,
        num_gpus,
        gpus_per_node=hardware.gpus_per_node,
        num_params=num_params,
        num_micro_batches=num_micro_batches,
        keep_gathered=keep_gathered,
    )
    times = tuple(
        time_collective(c, hardware, num_units=num_units, flat_ring_nics=flat_ring_nics)
        for c in collectives
    )
    compute_s = num_micro_batches * micro_batch_compute_s
    overlap_window_s = micro_batch_compute_s * (1 if keep_gathered else num_micro_batches)
    comm_s = sum(t.total_s for t in times)
    exposed_comm_s = max(0.0, comm_s - overlap_fraction * overlap_window_s)
    step_s = compute_s + exposed_comm_s
    global_batch = num_gpus * micro_batch * num_micro_batches
    return Projection(
        num_gpus=num_gpus,
        hardware=hardware.name,
        strategy=strategy,
        micro_batch=micro_batch,
        num_micro_batches=num_micro_batches,
        global_batch=global_batch,
        compute_s=compute_s,
        overlap_window_s=overlap_window_s,
        comm_s=comm_s,
        exposed_comm_s=exposed_comm_s,
        step_s=step_s,
        images_per_s=global_batch / step_s,
        efficiency=compute_s / step_s,
        network_bytes_per_gpu_per_step=sum(
            c.sent_bytes_per_gpu_per_step for c in collectives if c.link is not Link.NVLINK
        ),
        collectives=times,
    )


def read_best_measurements(path: Path) -> list[MeasuredStep]:
    """The fastest "ours" row per resolution (lowest time per image) of `train_step.py`'s
    JSON: {"rows": [{"res": 256, "micro_batch": 16, "accumulation": 8, "ours": {"step_ms":
    ...}}]}. A step's time over its accumulated micro-batches is one micro-batch's time.
    Rows without a time (failed or skipped) are left out."""
    rows = json.loads(path.read_text()).get("rows", [])
    best: dict[int, MeasuredStep] = {}
    for row in rows:
        measured = parse_measurement(row)
        if measured is None or measured.resolution is None:
            continue
        current = best.get(measured.resolution)
        if current is None or time_per_image_s(measured) < time_per_image_s(current):
            best[measured.resolution] = measured
    return [best[resolution] for resolution in sorted(best)]


def parse_measurement(row: dict[str, Any]) -> MeasuredStep | None:
    step_ms = row.get("ours", {}).get("step_ms")
    if step_ms is None or "skipped" in row:
        return None
    per_micro_batch_s = step_ms / 1e3 / row.get("accumulation", 1)
    return MeasuredStep(
        step_s=per_micro_batch_s, micro_batch=row["micro_batch"], resolution=row["res"]
    )


def time_per_image_s(measured: MeasuredStep) -> float:
    return measured.step_s / measured.micro_batch


def project_all(
    measured: MeasuredStep, args: argparse.Namespace
) -> list[tuple[MeasuredStep, Projection]]:
    """One projection per (GPUs, hardware, strategy)."""
    results = []
    for num_gpus in args.gpus:
        if args.global_batch:
            num_micro_batches = count_micro_batches(
                args.global_batch, num_gpus, measured.micro_batch
            )
        else:
            num_micro_batches = args.micro_batches
        for hardware in args.hardware:
            for strategy in Strategy:
                projection = project_step(
                    measured.step_s,
                    hardware,
                    strategy,
                    num_gpus,
                    micro_batch=measured.micro_batch,
                    num_micro_batches=num_micro_batches,
                    num_params=args.params,
                    keep_gathered=not args.reshard_after_forward,
                    overlap_fraction=args.overlap,
                    num_units=args.units,
                    flat_ring_nics=args.flat_ring_nics,
                )
                results.append((measured, projection))
    return results


TABLE_HEADER = (
    "| GPUs | hardware | strategy | global batch | micro-batches/step | compute ms | comm ms "
    "| exposed comm ms | step ms | img/s | efficiency % |"
)


def format_row(projection: Projection, target_global_batch: int) -> str:
    marker = "*" if target_global_batch and projection.global_batch != target_global_batch else ""
    cells = [
        str(projection.num_gpus),
        projection.hardware,
        projection.strategy.value,
        f"{projection.global_batch}{marker}",
        str(projection.num_micro_batches),
        f"{projection.compute_s * 1e3:.1f}",
        f"{projection.comm_s * 1e3:.1f}",
        f"{projection.exposed_comm_s * 1e3:.1f}",
        f"{projection.step_s * 1e3:.1f}",
        f"{projection.images_per_s:,.0f}",
        f"{projection.efficiency * 100:.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


def format_table(
    measured: MeasuredStep, projections: list[Projection], args: argparse.Namespace
) -> str:
    where = f"{measured.resolution} px, " if measured.resolution else ""
    lines = [
        f"### {where}{measured.step_s * 1e3:g} ms per micro-batch of {measured.micro_batch} "
        "on one GPU",
        "",
        TABLE_HEADER,
        "|" + "---|" * TABLE_HEADER.count(" | ") + "---|",
        *(format_row(p, args.global_batch) for p in projections),
        "",
        f"Overlap {args.overlap:g} of the compute under the collectives "
        f"({'every' if args.reshard_after_forward else 'one'} micro-batch), "
        f"{args.units} FSDP units, weights "
        f"{'resharded after forward' if args.reshard_after_forward else 'kept gathered'}, "
        f"flat rings over {args.flat_ring_nics} NIC(s) per GPU.",
    ]
    if any(args.global_batch and p.global_batch != args.global_batch for p in projections):
        lines.append(f"* global batch differs from the target {args.global_batch}.")
    return "\n".join(lines)


def describe_row(measured: MeasuredStep, projection: Projection) -> dict[str, Any]:
    row = asdict(projection)
    row["resolution"] = measured.resolution
    for item, timed in zip(row["collectives"], projection.collectives, strict=True):
        item["total_s"] = timed.total_s
        item["collective"]["payload_bytes_per_step"] = timed.collective.payload_bytes_per_step
        item["collective"]["sent_bytes_per_gpu_per_step"] = (
            timed.collective.sent_bytes_per_gpu_per_step
        )
    return row


def describe_assumptions(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "num_params": args.params,
        "target_global_batch": args.global_batch or None,
        "keep_gathered": not args.reshard_after_forward,
        "overlap_fraction": args.overlap,
        "num_units": args.units,
        "flat_ring_nics": args.flat_ring_nics,
    }


def parse_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_hardware(text: str) -> list[HardwareProfile]:
    unknown = [name for name in parse_list(text) if name not in HARDWARE_PROFILES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown hardware {unknown}; known {[*HARDWARE_PROFILES]}"
        )
    return [HARDWARE_PROFILES[name] for name in parse_list(text)]


def parse_gpus(text: str) -> list[int]:
    return [int(item) for item in parse_list(text)]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--step-ms", type=float, help="one GPU's time per micro-batch (fwd+bwd)")
    source.add_argument("--from-json", type=Path, help="bench JSON: best 'ours' row per res")
    parser.add_argument("--micro-batch", type=int, default=32, help="images per GPU per pass")
    parser.add_argument("--params", type=int, default=SD2_BASE_PARAMS)
    parser.add_argument("--gpus", type=parse_gpus, default=list(DEFAULT_GPUS))
    parser.add_argument("--hardware", type=parse_hardware, default=[A100, H100])
    parser.add_argument(
        "--global-batch",
        type=int,
        default=DEFAULT_GLOBAL_BATCH,
        help="target images per optimizer step (0: use --micro-batches)",
    )
    parser.add_argument("--micro-batches", type=int, default=1, help="with --global-batch 0")
    parser.add_argument("--reshard-after-forward", action="store_true")
    parser.add_argument("--overlap", type=float, default=DEFAULT_OVERLAP_FRACTION)
    parser.add_argument("--units", type=int, default=SD2_FSDP_UNITS, help="FSDP units")
    parser.add_argument(
        "--flat-ring-nics", type=int, default=1, help="NICs a flat cross-node ring spreads over"
    )
    parser.add_argument("--out", type=Path, default=None, help=f"folder for {OUTPUT_NAME}")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        measurements = read_best_measurements(args.from_json)
        if not measurements:
            print(f"no usable 'ours' rows in {args.from_json}", file=sys.stderr)
            return 1
    else:
        measurements = [MeasuredStep(step_s=args.step_ms / 1e3, micro_batch=args.micro_batch)]
    rows = []
    for measured in measurements:
        results = project_all(measured, args)
        print(format_table(measured, [p for _, p in results], args), end="\n\n")
        rows += [describe_row(m, p) for m, p in results]
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        document = {
            "assumptions": describe_assumptions(args),
            "hardware": [asdict(h) for h in args.hardware],
            "rows": rows,
        }
        (args.out / OUTPUT_NAME).write_text(json.dumps(document, indent=1))
        print(f"JSON: {args.out / OUTPUT_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
