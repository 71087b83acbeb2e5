"""The scaling projection: collective sizes, the cost model's arithmetic, and the CLI."""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import pytest

# The bench scripts import their siblings by bare name, with their own folder on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "bench"))
import scaling_projection as sp

SD2_PARAMS = 865_910_724
GPUS_PER_NODE = 8


def sum_payload_bytes(collectives: tuple[sp.Collective, ...], kind: sp.CollectiveKind) -> int:
    return sum(c.payload_bytes_per_step for c in collectives if c.kind is kind)


def fsdp_collectives(
    num_gpus: int, num_micro_batches: int, keep_gathered: bool
) -> tuple[sp.Collective, ...]:
    return sp.collective_bytes_per_step(
        sp.Strategy.FSDP,
        num_gpus,
        gpus_per_node=GPUS_PER_NODE,
        num_params=SD2_PARAMS,
        num_micro_batches=num_micro_batches,
        keep_gathered=keep_gathered,
    )


@pytest.mark.parametrize("num_micro_batches", [1, 2, 8, 32])
def test_kept_gathered_weights_are_gathered_once_per_step(num_micro_batches: int) -> None:
    collectives = fsdp_collectives(64, num_micro_batches, keep_gathered=True)
    assert sum_payload_bytes(collectives, sp.CollectiveKind.ALL_GATHER) == 2 * SD2_PARAMS
    assert sum_payload_bytes(collectives, sp.CollectiveKind.REDUCE_SCATTER) == 4 * SD2_PARAMS


def test_resharded_weights_are_gathered_twice_per_micro_batch() -> None:
    gathered = [
        sum_payload_bytes(fsdp_collectives(64, m, False), sp.CollectiveKind.ALL_GATHER)
        for m in (1, 2, 4)
    ]
    assert gathered == [2 * 2 * SD2_PARAMS * m for m in (1, 2, 4)]
    # Gradients are still reduce-scattered only once per step.
    collectives = fsdp_collectives(64, 4, keep_gathered=False)
    assert sum_payload_bytes(collectives, sp.CollectiveKind.REDUCE_SCATTER) == 4 * SD2_PARAMS


def test_hsdp_all_reduces_one_node_shard_of_the_gradients() -> None:
    num_gpus = 128
    num_nodes = num_gpus // GPUS_PER_NODE
    hsdp = sp.collective_bytes_per_step(
        sp.Strategy.HSDP, num_gpus, gpus_per_node=GPUS_PER_NODE, num_params=SD2_PARAMS
    )
    fsdp = fsdp_collectives(num_gpus, 1, keep_gathered=True)
    (all_reduce,) = [c for c in hsdp if c.kind is sp.CollectiveKind.ALL_REDUCE]
    # 4 bytes * 865,910,724 / 8 = 432,955,362 bytes, over one GPU per node.
    assert all_reduce.payload_bytes == 432_955_362
    assert all_reduce.num_ranks == num_nodes
    assert all_reduce.payload_bytes * GPUS_PER_NODE == sum_payload_bytes(
        fsdp, sp.CollectiveKind.REDUCE_SCATTER
    )
    assert all_reduce.sent_bytes_per_gpu_per_step == pytest.approx(
        2 * (num_nodes - 1) / num_nodes * 432_955_362
    )
    # Everything else stays inside the node.
    assert {c.link for c in hsdp if c is not all_reduce} == {sp.Link.NVLINK}
    assert {c.num_ranks for c in hsdp if c is not all_reduce} == {GPUS_PER_NODE}


def test_flat_fsdp_time_across_nodes_matches_hand_arithmetic() -> None:
    projection = sp.project_step(
        0.045, sp.A100, sp.Strategy.FSDP, 64, micro_batch=32, num_units=48, overlap_fraction=0.5
    )
    # A ring of 64 over 22 GB/s: 2 + 4 bytes per parameter, then 48 calls of 20 us * log2(64)
    # for the all-gather and the reduce-scatter each.
    bandwidth_s = 63 / 64 * 6 * SD2_PARAMS / 22e9
    latency_s = 2 * 48 * 20e-6 * 6
    assert projection.comm_s == pytest.approx(bandwidth_s + latency_s)
    assert projection.exposed_comm_s == pytest.approx(bandwidth_s + latency_s - 0.5 * 0.045)
    assert projection.step_s == pytest.approx(0.045 + projection.exposed_comm_s)


def test_hsdp_time_matches_hand_arithmetic() -> None:
    projection = sp.project_step(
        0.045, sp.H100, sp.Strategy.HSDP, 128, micro_batch=32, num_units=48
    )
    nvlink_s = 7 / 8 * 6 * SD2_PARAMS / 360e9 + 2 * 48 * 10e-6
    network_s = 2 * 15 / 16 * 4 * SD2_PARAMS / 8 / 45e9 + 48 * 20e-6 * math.log2(16)
    assert projection.comm_s == pytest.approx(nvlink_s + network_s)


@pytest.mark.parametrize("strategy", list(sp.Strategy))
@pytest.mark.parametrize("keep_gathered", [True, False])
def test_one_gpu_scales_perfectly(strategy: sp.Strategy, keep_gathered: bool) -> None:
    projection = sp.project_step(
        0.19,
        sp.A100,
        strategy,
        1,
        micro_batch=16,
        num_micro_batches=4,
        keep_gathered=keep_gathered,
        overlap_fraction=0.0,
    )
    assert abs(projection.efficiency - 1.0) < 1e-9
    assert projection.comm_s == 0.0
    assert projection.images_per_s == pytest.approx(4 * 16 / (4 * 0.19))


def test_hsdp_beats_flat_fsdp_on_128_h100s() -> None:
    num_micro_batches = sp.count_micro_batches(2048, 128, 32)
    step_s = {
        strategy: sp.project_step(
            0.045,
            sp.H100,
            strategy,
            128,
            micro_batch=32,
            num_micro_batches=num_micro_batches,
        ).step_s
        for strategy in sp.Strategy
    }
    assert step_s[sp.Strategy.HSDP] < step_s[sp.Strategy.FSDP]


def test_hsdp_equals_fsdp_inside_one_node() -> None:
    fsdp, hsdp = (
        sp.project_step(0.045, sp.A100, strategy, 8, micro_batch=32) for strategy in sp.Strategy
    )
    assert fsdp.step_s == hsdp.step_s
    assert fsdp.network_bytes_per_gpu_per_step == hsdp.network_bytes_per_gpu_per_step == 0


@pytest.mark.parametrize("num_gpus", [8, 64, 128])
@pytest.mark.parametrize("keep_gathered", [True, False])
def test_more_overlap_never_slows_the_step(num_gpus: int, keep_gathered: bool) -> None:
    for strategy in sp.Strategy:
        step_s = [
            sp.project_step(
                0.045,
                sp.A100,
                strategy,
                num_gpus,
                micro_batch=32,
                num_micro_batches=4,
                keep_gathered=keep_gathered,
                overlap_fraction=overlap / 10,
            ).step_s
            for overlap in range(11)
        ]
        assert all(later <= earlier for earlier, later in itertools.pairwise(step_s))
        assert step_s[-1] >= 4 * 0.045


def test_kept_gathered_weights_hide_comm_under_one_micro_batch_only() -> None:
    projection = sp.project_step(
        0.19, sp.A100, sp.Strategy.FSDP, 64, micro_batch=16, num_micro_batches=2
    )
    assert projection.exposed_comm_s == pytest.approx(projection.comm_s - 0.8 * 0.19)


def test_micro_batches_reach_the_global_batch_and_at_least_one() -> None:
    assert sp.count_micro_batches(2048, 8, 32) == 8
    assert sp.count_micro_batches(2048, 64, 16) == 2
    assert sp.count_micro_batches(2048, 128, 32) == 1


def test_hsdp_needs_whole_nodes() -> None:
    with pytest.raises(ValueError, match="whole nodes"):
        sp.collective_bytes_per_step(sp.Strategy.HSDP, 12, gpus_per_node=8)


def test_overlap_outside_unit_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="overlap_fraction"):
        sp.project_step(0.045, sp.A100, sp.Strategy.FSDP, 8, micro_batch=32, overlap_fraction=1.5)


def test_cli_prints_a_table_and_writes_one_row_per_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = sp.main(["--step-ms", "45", "--micro-batch", "32", "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    table_rows = [line for line in printed.splitlines() if line.startswith("| ")]
    assert table_rows[0].startswith("| GPUs | hardware | strategy |")
    assert len(table_rows) == 1 + 3 * 2 * 2
    document = json.loads((tmp_path / "scaling_projection.json").read_text())
    keys = [(row["num_gpus"], row["hardware"], row["strategy"]) for row in document["rows"]]
    assert len(keys) == len(set(keys)) == 12
    assert {key[0] for key in keys} == {8, 64, 128}
    assert {key[1] for key in keys} == {"a100", "h100"}
    assert {key[2] for key in keys} == {"fsdp", "hsdp"}
    assert document["assumptions"]["overlap_fraction"] == 0.8


def test_cli_reads_the_best_ours_row_per_resolution(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = tmp_path / "bench.json"
    rows = [
        {"res": 256, "micro_batch": 32, "accumulation": 1, "ours": {"step_ms": 50.0}},
        # fastest per image: 160 ms over 8 micro-batches of 16
        {"res": 256, "micro_batch": 16, "accumulation": 8, "ours": {"step_ms": 160.0}},
        {"res": 256, "micro_batch": 8, "accumulation": 1, "ours": {"error": "OOM"}},
        {"res": 256, "micro_batch": 4, "accumulation": 1, "skipped": "time budget 330 s"},
        {"res": 512, "micro_batch": 16, "accumulation": 1, "ours": {"step_ms": 190.0}},
    ]
    bench.write_text(json.dumps({"machine": {}, "rows": rows}))
    assert sp.read_best_measurements(bench) == [
        sp.MeasuredStep(step_s=0.020, micro_batch=16, resolution=256),
        sp.MeasuredStep(step_s=0.190, micro_batch=16, resolution=512),
    ]
    assert sp.main(["--from-json", str(bench), "--gpus", "8", "--hardware", "h100"]) == 0
    printed = capsys.readouterr().out
    assert "### 256 px, 20 ms per micro-batch of 16" in printed
    assert "### 512 px, 190 ms per micro-batch of 16" in printed
