"""What the training-step benchmark runs: cases in priority order, and how a case's variant maps
to the stock step and to our trainer's config.

A variant is `+`-joined tokens. The stock step reads `eager`/`compile` and `cl`; ours reads
them too, plus the levers: `blocks` (one FSDP2 unit per down/mid/up block instead of per
layer), `reshard` (free gathered weights after every micro-batch's forward),
`cudagraphs` (compile mode reduce-overhead) and `noema`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STOCK_TOKENS = ("eager", "compile", "cl")
LEVER_TOKENS = ("blocks", "reshard", "cudagraphs", "noema")
# Seconds a row needs at least on a GPU (compiling SD-2-base takes minutes): a row is not
# started unless this much of the budget is left.
MIN_ROW_S = {"compile": 120.0, "eager": 30.0}


@dataclass(frozen=True)
class Case:
    """One row: resolution (px), per-GPU micro-batch, micro-batches per step, variant."""

    res: int
    micro_batch: int
    accumulation: int
    variant: str

    @property
    def tokens(self) -> list[str]:
        return self.variant.split("+")

    @property
    def images_per_step(self) -> int:
        return self.micro_batch * self.accumulation

    @property
    def stock_variant(self) -> str:
        """The stock step to compare with: same compile mode and layout, none of our levers."""
        return "+".join(token for token in self.tokens if token in STOCK_TOKENS)

    @property
    def min_seconds(self) -> float:
        return MIN_ROW_S["compile" if "compile" in self.tokens else "eager"]


# Priority order: with a time budget the first rows are the ones that must come back. Rows
# that compile the same graphs (same resolution, micro-batch, units and mode) sit together:
# Inductor's cache makes the second one cheap.
GPU_PLAN = (
    Case(256, 128, 1, "compile+cl"),  # the headline rows, against the stock step's best
    Case(512, 32, 1, "compile+cl"),
    Case(256, 16, 8, "compile+cl"),  # the presets' micro-batch, accumulating to 128
    Case(256, 16, 8, "compile+cl+reshard"),  # lever: weights freed between micro-batches
    Case(256, 128, 1, "compile+cl+noema"),  # lever: the EMA's share of the step
    Case(256, 128, 1, "eager+cl"),  # lever: compile
    Case(256, 256, 1, "compile+cl"),  # larger micro-batches
    Case(512, 64, 1, "compile+cl"),
    Case(256, 128, 1, "compile+cl+blocks"),  # lever: coarse sharding units
    Case(512, 16, 2, "compile+cl"),  # the presets' micro-batch at 512 px
    Case(256, 128, 1, "compile"),  # lever: channels_last
    Case(256, 128, 1, "compile+cl+cudagraphs"),
)
TINY_PLAN = (
    Case(256, 8, 1, "eager+cl"),
    Case(256, 4, 2, "eager+cl"),
    Case(256, 4, 2, "eager+cl+reshard+blocks"),
)
TINY_COMPILE_PLAN = (Case(256, 4, 1, "compile+cl"),)


def parse_case(text: str) -> Case:
    """`res:micro_batch:variant` or `res:micro_batchxaccumulation:variant`."""
    try:
        res, batch, variant = text.split(":")
        micro_batch, _, accumulation = batch.partition("x")
        case = Case(int(res), int(micro_batch), int(accumulation or 1), variant)
    except ValueError as error:
        raise SystemExit(f"--only {text!r}: expected res:batch[xaccum]:variant") from error
    unknown = set(case.tokens) - set(STOCK_TOKENS) - set(LEVER_TOKENS)
    if unknown:
        raise SystemExit(f"--only {text!r}: unknown variant tokens {sorted(unknown)}")
    return case


def training_overrides(case: Case) -> dict[str, Any]:
    """The `training` section of our trainer's config for this case."""
    tokens = case.tokens
    compile_mode = "reduce-overhead" if "cudagraphs" in tokens else "default"
    return {
        "globalBatchSize": case.images_per_step,
        "microBatchSize": case.micro_batch,
        "compile": "compile" in tokens,
        "compileMode": compile_mode,
        "channelsLast": "cl" in tokens,
        "fsdpUnits": "blocks" if "blocks" in tokens else "layers",
        "reshardAfterForward": "reshard" in tokens,
    }
