"""Turn the validated `algo` config section into the pure algorithm objects (once, at build time).

This is the only place that knows both the pydantic config and the algo/ dataclasses, so algo/ stays
free of pydantic and the loss never sees the whole config (design.md §3).
"""
from __future__ import annotations

from dataclasses import dataclass

from dcpo_mcore.algo import (
    ALGORITHMS,
    AlgorithmSpec,
    DcpoClipParams,
    GrpoAdvantageParams,
    GspoParams,
    LossSpec,
    PpoClipParams,
    SasParams,
)
from dcpo_mcore.config.algo import AlgoConfig


@dataclass(frozen=True)
class AlgorithmParts:
    spec: AlgorithmSpec
    estimator_params: SasParams | GrpoAdvantageParams
    loss: LossSpec


def objective_params(algo: AlgoConfig, objective: str):
    if objective == "dcpo":
        # One r_max for the dynamic upper bound and the negative-advantage dual clip (spec B13).
        return DcpoClipParams(algo.eps_low, algo.eps_high, algo.ratio_cap)
    if objective == "ppo_clip":
        return PpoClipParams(algo.eps_low, algo.eps_high, algo.dual_clip_c)
    if objective == "gspo":
        return GspoParams(algo.eps_low, algo.eps_high)
    raise ValueError(f"no parameter mapping for objective '{objective}'")


def build_algorithm(algo: AlgoConfig) -> AlgorithmParts:
    spec = ALGORITHMS.get(algo.name)
    estimator_params = SasParams(std=algo.sas_std) if spec.estimator == "sas" else GrpoAdvantageParams()
    loss = LossSpec(
        objective=spec.objective,
        objective_params=objective_params(algo, spec.objective),
        aggregation=algo.aggregation,  # filled per algorithm by the config; a user override wins
        kl_coef=algo.kl_coef,
        entropy_coef=algo.entropy_coef,
    )
    return AlgorithmParts(spec, estimator_params, loss)
