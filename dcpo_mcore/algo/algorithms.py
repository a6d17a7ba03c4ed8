"""The algorithms as compositions of registered parts (docs/algorithm.md [step], [baselines], [ablations]).

Each algorithm names its advantage estimator, token objective and default aggregation; this table is
the one place that says which parts go together. Each method's settings and their defaults live in
dcpo_mcore/config/algo.py, one typed class per method, which reads its aggregation default here.
"""
from __future__ import annotations

from dataclasses import dataclass

from .registry import Registry


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    estimator: str  # key in advantages.ESTIMATORS
    objective: str  # key in objectives.OBJECTIVES
    aggregation: str  # default key in aggregation.AGGREGATIONS (a config setting may override it)


ALGORITHMS: Registry[AlgorithmSpec] = Registry("algorithm")
ALGORITHMS.register("dcpo", AlgorithmSpec("dcpo", estimator="sas", objective="dcpo", aggregation="otm"))
ALGORITHMS.register("grpo", AlgorithmSpec("grpo", estimator="grpo", objective="ppo_clip",
                                          aggregation="seq_mean_token_mean"))
ALGORITHMS.register("dapo", AlgorithmSpec("dapo", estimator="grpo", objective="ppo_clip", aggregation="token_mean"))
ALGORITHMS.register("gspo", AlgorithmSpec("gspo", estimator="grpo", objective="gspo",
                                          aggregation="seq_mean_token_mean"))
# The paper's section 5.4 ablations: GRPO without its KL plus one DCPO component (docs/algorithm.md
# [ablations]). The third, GRPO+OTM, needs no name: it is grpo with algo.aggregation=otm algo.kl_coef=0.
ALGORITHMS.register("grpo_sas", AlgorithmSpec("grpo_sas", estimator="sas", objective="ppo_clip",
                                              aggregation="seq_mean_token_mean"))
ALGORITHMS.register("grpo_dac", AlgorithmSpec("grpo_dac", estimator="grpo", objective="dcpo",
                                              aggregation="seq_mean_token_mean"))
# A probability-difference trust region in place of GRPO's ratio clip (docs/algorithm.md [dppo]).
ALGORITHMS.register("dppo", AlgorithmSpec("dppo", estimator="grpo", objective="dppo_tv",
                                          aggregation="seq_mean_token_mean"))
