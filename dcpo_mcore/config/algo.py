"""`algo` section: the policy-gradient method and its settings, one typed class per method.

`algo.name` selects the class (a pydantic discriminated union), so every method carries only the
settings it uses, each with that method's own default (docs/algorithm.md [defaults]). A setting the
chosen method does not use is refused in one line naming it, never accepted and ignored:
``algo.name=dcpo algo.dual_clip_c=3`` fails, because DCPO's dual clip *is* ``ratio_cap``
(docs/algorithm.md [choice-one-ratio-cap]).

Which parts make up each method (advantage estimator, token objective, default aggregation) is
defined once, in dcpo_mcore/algo/algorithms.py; the aggregation default below is read from there.
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, TypeAdapter

from dcpo_mcore.algo.algorithms import ALGORITHMS

from .base import Section

Aggregation = Literal["otm", "token_sum", "token_mean", "seq_mean_token_mean"]
DEFAULT_ALGORITHM = "dcpo"
DEFAULT_TIS_CAP = 2.0  # algo.tis_cap when left unset and rollout.max_staleness >= 1 (docs/algorithm.md [tis])
_NAME = ("Policy-gradient method: dcpo (default), grpo, dapo or gspo; the ablations grpo_sas and grpo_dac; "
         "or dppo. It decides which settings exist.")


def _aggregation(name: str):
    """The aggregation field of method `name`, its default taken from the composition table."""
    return Field(ALGORITHMS.get(name).aggregation,
                 description="Token-loss aggregation: otm (paper Eq. 8), token_sum, token_mean (DAPO) or "
                 f"seq_mean_token_mean (GRPO); {name}'s own is {ALGORITHMS.get(name).aggregation}.")


class _MethodSettings(Section):
    """Settings every method has. Subclasses give `name` and their own clip defaults."""

    # One-line hints for settings of other methods that a user may expect this one to have.
    refused_hints: ClassVar[dict[str, str]] = {}

    kl_coef: float = Field(0.0, ge=0.0, description="KL penalty coefficient beta (k3 estimator); "
                           "0 = no reference model is built.")
    kl_type: Literal["low_var_kl"] = Field(
        "low_var_kl", description="KL estimator: low_var_kl (k3, clamped; docs/algorithm.md [kl]).")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each rollout batch (paper: 1).")
    mini_batch_prompts: int = Field(
        32, ge=1, description="Prompts per optimizer step (paper: 32, i.e. 16 optimizer steps per "
        "512-prompt training step); must divide rollout.prompts_per_step.")
    entropy_coef: float = Field(0.0, description="Entropy bonus coefficient (0 in all paper runs).")
    tis_cap: float | None = Field(
        None, ge=1.0, description="Truncated importance weight min(pi_old / pi_sampler, C) on each token's "
        "policy-gradient term, from SGLang's sampler log-probs (docs/algorithm.md [tis]); C >= 1, null = off. "
        f"Left unset, it is off on-policy and {DEFAULT_TIS_CAP} when rollout.max_staleness >= 1.")

    def rollout_shaping(self) -> dict[str, Any]:
        """Keyword arguments for the rollout stage's group filter and reward shaping (DAPO's only)."""
        return {}


class DacFields(Section):
    """Dynamic-adaptive clipping's parameters (DCPO and the GRPO+DAC ablation)."""

    refused_hints: ClassVar[dict[str, str]] = {
        "dual_clip_c": "dynamic-adaptive clipping clips negative advantages at algo.ratio_cap, one r_max for "
                       "both signs (docs/algorithm.md [choice-one-ratio-cap]); set algo.ratio_cap",
    }

    eps_low: float = Field(0.16, gt=0.0, description="Dynamic lower-bound parameter (paper 0.16); "
                           "must be < 0.25 so the bound is real at q = 1 (docs/algorithm.md [dac-bounds]).")
    eps_high: float = Field(0.2, gt=0.0, description="Dynamic upper-bound parameter (paper 0.2).")
    ratio_cap: float = Field(10.0, gt=1.0, description="r_max: the cap on the dynamic upper bound and "
                             "the dual clip of negative advantages (paper: 10).")


class SasFields(Section):
    """Smooth advantage standardisation's one option (DCPO and the GRPO+SAS ablation)."""

    sas_std: Literal["unbiased", "population"] = Field(
        "unbiased", description="Standard deviation of Smooth Advantage Standardisation: unbiased "
        "(G-1, released code) or population (paper A.7); docs/algorithm.md [choice-sas-std].")


class DcpoSettings(DacFields, SasFields, _MethodSettings):
    """DCPO: dynamic-adaptive clip bounds, smooth advantage standardisation, OTM (docs/algorithm.md)."""

    name: Literal["dcpo"] = Field("dcpo", description=_NAME)
    aggregation: Aggregation = _aggregation("dcpo")


class PpoClipSettings(_MethodSettings):
    """The fixed-bound PPO clip GRPO and DAPO share (docs/algorithm.md [baselines])."""

    eps_low: float = Field(0.2, gt=0.0, lt=1.0, description="Lower clip epsilon: ratio >= 1 - eps_low.")
    eps_high: float = Field(0.2, gt=0.0, description="Upper clip epsilon: ratio <= 1 + eps_high.")
    dual_clip_c: float | None = Field(None, gt=1.0, description="Dual-clip constant c for negative "
                                      "advantages (objective >= A*c); null = off.")


class GrpoSettings(PpoClipSettings):
    """GRPO: group standardisation, symmetric PPO clip, KL to the reference policy."""

    name: Literal["grpo"] = Field("grpo", description=_NAME)
    kl_coef: float = Field(0.001, ge=0.0, description="KL penalty coefficient beta (k3 estimator); "
                           "0 = no reference model is built (docs/algorithm.md [choice-grpo-kl]).")
    aggregation: Aggregation = _aggregation("grpo")


class DapoSettings(PpoClipSettings):
    """DAPO: clip-higher, token-mean, dynamic sampling and soft overlong punishment."""

    name: Literal["dapo"] = Field("dapo", description=_NAME)
    eps_high: float = Field(0.28, gt=0.0, description="Upper clip epsilon (clip-higher): ratio <= 1 + eps_high.")
    dual_clip_c: float | None = Field(10.0, gt=1.0, description="Dual-clip constant c for negative "
                                      "advantages (objective >= A*c); null = off.")
    aggregation: Aggregation = _aggregation("dapo")
    dynamic_sampling: bool = Field(
        True, description="Drop groups whose rewards all agree and generate more until "
        "rollout.prompts_per_step groups remain.")
    max_gen_batches: int = Field(
        10, ge=1, description="Most rollout batches generated for one training step before giving up "
        "with an error.")
    overlong_buffer_len: int = Field(
        512, ge=0, description="Responses longer than rollout.max_new_tokens - this many tokens get a "
        "linear penalty (on the response length, docs/algorithm.md [choice-overlong-length]); 0 = off.")
    overlong_penalty: float = Field(1.0, ge=0.0, description="Overlong penalty reached at max_new_tokens.")

    def rollout_shaping(self) -> dict[str, Any]:
        return dict(dynamic_sampling=self.dynamic_sampling, max_gen_batches=self.max_gen_batches,
                    overlong_buffer_len=self.overlong_buffer_len, overlong_penalty=self.overlong_penalty)


class GspoSettings(_MethodSettings):
    """GSPO: the clip acts on the per-sequence geometric-mean ratio (docs/algorithm.md [gspo])."""

    refused_hints: ClassVar[dict[str, str]] = {
        "gspo_eps_low": "gspo's sequence-ratio clip is algo.eps_low / algo.eps_high (default 3e-4 / 4e-4)",
        "gspo_eps_high": "gspo's sequence-ratio clip is algo.eps_low / algo.eps_high (default 3e-4 / 4e-4)",
    }

    name: Literal["gspo"] = Field("gspo", description=_NAME)
    eps_low: float = Field(3e-4, gt=0.0, lt=1.0, description="Lower clip epsilon of the sequence ratio.")
    eps_high: float = Field(4e-4, gt=0.0, description="Upper clip epsilon of the sequence ratio.")
    aggregation: Aggregation = _aggregation("gspo")


class GrpoSasSettings(SasFields, PpoClipSettings):
    """Ablation GRPO+SAS (paper section 5.4): GRPO without KL, with SAS in place of its standardisation."""

    name: Literal["grpo_sas"] = Field("grpo_sas", description=_NAME)
    aggregation: Aggregation = _aggregation("grpo_sas")


class GrpoDacSettings(DacFields, _MethodSettings):
    """Ablation GRPO+DAC (paper section 5.4): GRPO without KL, with dynamic-adaptive clipping in place of
    its fixed clip."""

    name: Literal["grpo_dac"] = Field("grpo_dac", description=_NAME)
    aggregation: Aggregation = _aggregation("grpo_dac")


class DppoSettings(_MethodSettings):
    """DPPO Binary-TV: GRPO's advantages with a probability-difference trust region in place of the
    ratio clip (docs/algorithm.md [dppo])."""

    refused_hints: ClassVar[dict[str, str]] = {
        "eps_low": "dppo bounds the probability change, not the ratio: set algo.delta_low",
        "eps_high": "dppo bounds the probability change, not the ratio: set algo.delta_high",
    }

    name: Literal["dppo"] = Field("dppo", description=_NAME)
    delta_low: float = Field(0.15, gt=0.0, lt=1.0, description="A < 0 tokens get no gradient once "
                             "p - q < -delta_low (q: old probability).")
    delta_high: float = Field(0.15, gt=0.0, lt=1.0, description="A > 0 tokens get no gradient once "
                              "p - q > delta_high.")
    aggregation: Aggregation = _aggregation("dppo")


_CLASSES = (DcpoSettings, GrpoSettings, DapoSettings, GspoSettings, GrpoSasSettings, GrpoDacSettings, DppoSettings)
METHOD_SETTINGS: dict[str, type[_MethodSettings]] = {
    cls.model_fields["name"].default: cls for cls in _CLASSES}
assert set(METHOD_SETTINGS) == set(ALGORITHMS.names()), "every registered method needs its settings class"

AlgoConfig = Annotated[Union[_CLASSES], Field(discriminator="name")]
_ADAPTER: TypeAdapter = TypeAdapter(AlgoConfig)


def with_default_name(data: Any) -> Any:
    """An `algo:` mapping without `name` means DCPO (the discriminator needs the key present)."""
    if isinstance(data, dict) and "name" not in data:
        return {"name": DEFAULT_ALGORITHM, **data}
    return data


def algo_config(**values: Any) -> _MethodSettings:
    """Build one method's settings from keyword values (raises pydantic's ValidationError)."""
    return _ADAPTER.validate_python(with_default_name(values))
