"""Turn the validated `algo` config section into the pure algorithm objects (once, at build time).

This is the only place that knows both the pydantic config and the algo/ dataclasses, so algo/ stays
free of pydantic and the loss never sees the whole config (docs/architecture.md [conv-pure-algo]).
"""
from __future__ import annotations

from dataclasses import dataclass

from dcpo_mcore.algo import (
    ALGORITHMS,
    AlgorithmSpec,
    DcpoClipParams,
    DppoTvParams,
    GrpoAdvantageParams,
    GspoParams,
    LossSpec,
    PpoClipParams,
    SasParams,
)
from dcpo_mcore.config.algo import DacFields, DppoSettings, GspoSettings, PpoClipSettings, SasFields


@dataclass(frozen=True)
class AlgorithmParts:
    spec: AlgorithmSpec
    estimator_params: SasParams | GrpoAdvantageParams
    loss: LossSpec


def objective_params(algo) -> DcpoClipParams | PpoClipParams | GspoParams | DppoTvParams:
    """The token objective's parameters from one method's settings (each method has its own class)."""
    if isinstance(algo, DacFields):  # dcpo, grpo_dac
        # One r_max for the dynamic upper bound and the negative-advantage dual clip
        # (docs/algorithm.md [choice-one-ratio-cap]).
        return DcpoClipParams(algo.eps_low, algo.eps_high, algo.ratio_cap)
    if isinstance(algo, PpoClipSettings):
        return PpoClipParams(algo.eps_low, algo.eps_high, algo.dual_clip_c)
    if isinstance(algo, GspoSettings):
        return GspoParams(algo.eps_low, algo.eps_high)
    if isinstance(algo, DppoSettings):
        return DppoTvParams(algo.delta_low, algo.delta_high)
    raise TypeError(f"no objective parameters for {type(algo).__name__}")


def build_algorithm(algo) -> AlgorithmParts:
    spec = ALGORITHMS.get(algo.name)
    # dcpo and grpo_sas carry sas_std; the composition table must agree that their estimator is SAS.
    estimator_params = SasParams(std=algo.sas_std) if isinstance(algo, SasFields) else GrpoAdvantageParams()
    loss = LossSpec(
        objective=spec.objective,
        objective_params=objective_params(algo),
        aggregation=algo.aggregation,  # filled per algorithm by the config; a user override wins
        kl_coef=algo.kl_coef,
        entropy_coef=algo.entropy_coef,
    )
    return AlgorithmParts(spec, estimator_params, loss)
