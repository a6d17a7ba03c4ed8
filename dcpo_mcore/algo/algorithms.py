"""The four algorithms as compositions of registered parts (spec §1, §7).

Each algorithm names its advantage estimator, token objective and aggregation, plus DAPO's sampling
extras. Hyper-parameters come from the config; this table only says which parts go together.
"""
from __future__ import annotations

from dataclasses import dataclass

from .registry import Registry


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    estimator: str  # key in advantages.ESTIMATORS
    objective: str  # key in objectives.OBJECTIVES
    aggregation: str  # default key in aggregation.AGGREGATIONS
    dynamic_sampling: bool = False  # DAPO over-generates until enough non-degenerate groups are kept
    overlong_shaping: bool = False  # DAPO soft overlong punishment on response length


ALGORITHMS: Registry[AlgorithmSpec] = Registry("algorithm")
ALGORITHMS.register("dcpo", AlgorithmSpec("dcpo", estimator="sas", objective="dcpo", aggregation="otm"))
ALGORITHMS.register("grpo", AlgorithmSpec("grpo", estimator="grpo", objective="ppo_clip", aggregation="seq_mean_token_mean"))
ALGORITHMS.register(
    "dapo",
    AlgorithmSpec("dapo", estimator="grpo", objective="ppo_clip", aggregation="token_mean",
                  dynamic_sampling=True, overlong_shaping=True),
)
ALGORITHMS.register("gspo", AlgorithmSpec("gspo", estimator="grpo", objective="gspo", aggregation="seq_mean_token_mean"))
