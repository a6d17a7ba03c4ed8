"""Plain descriptions of how the policy is laid out and computed, independent of the config classes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class ParallelLayout:
    """Model parallelism of the policy (DP is whatever is left of the world size)."""

    tp: int = 1
    pp: int = 1
    vpp: int | None = None  # virtual pipeline stages per PP rank (interleaved schedule)
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = False
    recompute: Literal["none", "full", "selective"] = "none"


@dataclass(frozen=True)
class Precision:
    """Parameter dtype and the optional FP8 recipe (FP8 needs Transformer Engine on a GPU)."""

    params_dtype: torch.dtype = torch.float32
    fp8: Literal["e4m3", "hybrid"] | None = None
    fp8_recipe: Literal["delayed", "tensorwise", "blockwise"] = "delayed"


# Rows an FP8 GEMM needs to be divisible by, per recipe: Transformer Engine checks prod(shape[:-1]) % 8
# for per-tensor scaling and quantises 128-row blocks for blockwise scaling (docs/gpu.md [fp8-rows]).
FP8_ROW_MULTIPLE = {"delayed": 8, "tensorwise": 8, "blockwise": 128}


def sequence_multiple(layout: ParallelLayout, precision: Precision) -> int:
    """What every micro-batch's sequence length must be a multiple of for this layout and precision.

    Sequence parallelism splits the sequence over the TP ranks, so it must divide by TP; under FP8 each
    rank's rows (S / TP per sample with SP, S without) must also divide by the recipe's row multiple."""
    sp = layout.tp if layout.sequence_parallel else 1
    fp8 = FP8_ROW_MULTIPLE[precision.fp8_recipe] if precision.fp8 else 1
    return sp * fp8
