"""`algo` section: which policy-gradient method and its hyper-parameters.

Several defaults depend on `algo.name` (dcpo_spec.md §6, §7). They are filled by a *before*
validator from ALGO_DEFAULTS, only for keys the user did not write: an explicit value, including
an explicit null where null is allowed, always wins. The resolved config saved in the run
directory carries the filled values, so reloading it never re-derives them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from .base import Section

AlgoName = Literal["dcpo", "grpo", "dapo", "gspo"]
Aggregation = Literal["otm", "token_sum", "token_mean", "seq_mean_token_mean"]


@dataclass(frozen=True)
class _SameAs:
    """A default that copies another field of the same section (after its own default applies)."""

    field: str


# name -> {field: default}. Sources: DCPO paper A.9 / spec §6 (dcpo), spec §7.1-7.3 (baselines).
ALGO_DEFAULTS: dict[str, dict[str, Any]] = {
    # Paper: eps (0.16, 0.2); one r_max = 10 for both advantage signs (spec B13), so the
    # negative-advantage dual clip defaults to ratio_cap. No KL, no dynamic sampling (spec §1).
    "dcpo": dict(eps_low=0.16, eps_high=0.2, dual_clip_c=_SameAs("ratio_cap"), aggregation="otm",
                 kl_coef=0.0, dynamic_sampling=False, overlong_buffer_len=0, overlong_penalty=0.0),
    # Symmetric 0.2 clip, no dual clip, low_var_kl with beta 0.001 (spec §7.1, B7).
    "grpo": dict(eps_low=0.2, eps_high=0.2, dual_clip_c=None, aggregation="seq_mean_token_mean",
                 kl_coef=0.001, dynamic_sampling=False, overlong_buffer_len=0, overlong_penalty=0.0),
    # Clip-higher (0.2, 0.28), dual clip 10, token-mean, dynamic sampling, 512-token overlong
    # buffer on the *response* length (spec §7.2, B5).
    "dapo": dict(eps_low=0.2, eps_high=0.28, dual_clip_c=10.0, aggregation="token_mean",
                 kl_coef=0.0, dynamic_sampling=True, overlong_buffer_len=512, overlong_penalty=1.0),
    # Sequence-ratio clip (3e-4, 4e-4), seq-mean-token-mean, no KL (spec §7.3, B7 recommendation).
    "gspo": dict(eps_low=_SameAs("gspo_eps_low"), eps_high=_SameAs("gspo_eps_high"), dual_clip_c=None,
                 aggregation="seq_mean_token_mean", kl_coef=0.0, dynamic_sampling=False,
                 overlong_buffer_len=0, overlong_penalty=0.0),
}

_PER_ALGO = "Default depends on algo.name: "


class AlgoConfig(Section):
    name: AlgoName = Field(
        "dcpo", description="Policy-gradient method: dcpo (dynamic clip + SAS + OTM), grpo, dapo or gspo.")
    # Fields below without a default are filled from ALGO_DEFAULTS by _fill_algorithm_defaults.
    eps_low: float = Field(
        gt=0.0, lt=1.0, description="Lower clip epsilon (ratio >= 1 - eps_low; dcpo: dynamic bound "
        "parameter, must be < 0.25). " + _PER_ALGO + "dcpo 0.16, grpo 0.2, dapo 0.2, gspo = gspo_eps_low.")
    eps_high: float = Field(
        gt=0.0, description="Upper clip epsilon (ratio <= 1 + eps_high; dcpo: dynamic bound "
        "parameter). " + _PER_ALGO + "dcpo 0.2, grpo 0.2, dapo 0.28, gspo = gspo_eps_high.")
    ratio_cap: float = Field(
        10.0, gt=1.0, description="dcpo only: r_max, the cap on the dynamic upper bound h(q) (paper: 10).")
    dual_clip_c: float | None = Field(
        gt=1.0, description="Dual-clip constant c for negative advantages (objective >= A*c); null = "
        "off. " + _PER_ALGO + "dcpo = ratio_cap, dapo 10, grpo/gspo null.")
    sas_std: Literal["unbiased", "population"] = Field(
        "unbiased", description="dcpo only: standard deviation used by Smooth Advantage "
        "Standardisation: unbiased (G-1, released code) or population (paper A.7); spec B15.")
    aggregation: Aggregation = Field(
        description="Token-loss aggregation: otm (paper Eq. 8), token_sum, token_mean (DAPO) or "
        "seq_mean_token_mean (GRPO). " + _PER_ALGO + "dcpo otm, grpo/gspo seq_mean_token_mean, "
        "dapo token_mean.")
    kl_coef: float = Field(
        ge=0.0, description="KL penalty coefficient beta; 0 = no reference model is built. "
        + _PER_ALGO + "grpo 0.001, others 0.")
    kl_type: Literal["low_var_kl"] = Field(
        "low_var_kl", description="KL estimator: low_var_kl (k3, clamped as in verl).")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each rollout batch (paper: 1).")
    mini_batch_prompts: int = Field(
        32, ge=1, description="Prompts per optimizer step (paper: 32, i.e. 16 optimizer steps per "
        "512-prompt training step); must divide rollout.prompts_per_step.")
    dynamic_sampling: bool = Field(
        description="DAPO dynamic sampling: drop groups whose rewards all agree and generate more "
        "until prompts_per_step groups remain; dapo only. " + _PER_ALGO + "dapo true, others false.")
    max_gen_batches: int = Field(
        10, ge=1, description="DAPO over-generation cap: most rollout batches generated for one "
        "training step before giving up with an error.")
    overlong_buffer_len: int = Field(
        ge=0, description="DAPO overlong shaping: responses longer than max_new_tokens - this many "
        "tokens get a linear penalty; 0 = off; < rollout.max_new_tokens. " + _PER_ALGO
        + "dapo 512, others 0.")
    overlong_penalty: float = Field(
        ge=0.0, description="DAPO overlong shaping: penalty reached at max_new_tokens. "
        + _PER_ALGO + "dapo 1.0, others 0.")
    gspo_eps_low: float = Field(
        3e-4, gt=0.0, lt=1.0, description="gspo only: lower clip epsilon of the sequence-level ratio.")
    gspo_eps_high: float = Field(
        4e-4, gt=0.0, description="gspo only: upper clip epsilon of the sequence-level ratio.")
    entropy_coef: float = Field(
        0.0, description="Entropy bonus coefficient (0 in all paper runs).")

    @model_validator(mode="before")
    @classmethod
    def _fill_algorithm_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data  # an AlgoConfig instance, or junk that pydantic will reject with a clear message
        # An unknown name still gets dcpo's values so the Literal check is the only error reported.
        name = data.get("name", cls.model_fields["name"].default)
        table = ALGO_DEFAULTS.get(name if isinstance(name, str) else "dcpo", ALGO_DEFAULTS["dcpo"])
        data = dict(data)
        for key, default in table.items():
            if key in data:
                continue
            if isinstance(default, _SameAs):
                default = data.get(default.field, cls.model_fields[default.field].default)
            data[key] = default
        return data
