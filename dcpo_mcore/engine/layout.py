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
