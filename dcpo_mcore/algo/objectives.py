"""Token objectives of the baselines, and the registry that selects an objective by name.

docs/algorithm.md [baselines] (formulas as intended, where the authors' code disagrees: a per-sequence GSPO ratio,
[choice-gspo-per-sequence], and one ratio cap, [choice-one-ratio-cap]). Every objective has the same call shape

    fn(logprobs[B,T], old_logprobs[B,T], advantages[B] or [B,T], mask[B,T], params) -> TokenLossOutput

and its own typed parameter dataclass, so a loss never receives the whole config.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch

from .clipping import (
    LOG_RATIO_CLAMP,
    TokenLossOutput,
    _as_float,
    broadcast_advantages,
    clipped_surrogate,
    dcpo_token_objective,
    log_ratio,
)
from .registry import Registry


@dataclass(frozen=True)
class DcpoClipParams:
    """DCPO dynamic-adaptive clipping (paper A.9: eps 0.16 / 0.2, r_max 10 for both signs)."""

    eps_low: float = 0.16
    eps_high: float = 0.2
    ratio_cap: float = 10.0


@dataclass(frozen=True)
class PpoClipParams:
    """Fixed PPO clip [1 - eps_low, 1 + eps_high], optional dual clip c for A < 0.

    GRPO: (0.2, 0.2, no dual clip); DAPO clip-higher: (0.2, 0.28, c = 10).
    """

    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip_c: float | None = None


@dataclass(frozen=True)
class GspoParams:
    """GSPO sequence-ratio clip (Zheng et al. 2025; docs/algorithm.md [gspo]): [1 - 3e-4, 1 + 4e-4]."""

    eps_low: float = 3e-4
    eps_high: float = 4e-4


@dataclass(frozen=True)
class DppoTvParams:
    """DPPO Binary-TV trust region (Qi et al. 2026, arXiv 2602.04879; docs/algorithm.md [dppo]): a token
    stops getting gradient once its probability moved more than delta_high up (A > 0) or delta_low down
    (A < 0) from the old policy's. 0.15 / 0.15 are the thresholds the authors' released runs use."""

    delta_low: float = 0.15
    delta_high: float = 0.15


@dataclass(frozen=True)
class NllParams:
    """Advantage-weighted log-likelihood (no ratio, no clip): no parameters.

    With advantage 1 on every response and ``token_mean`` aggregation this is plain next-token
    cross-entropy on the response tokens: supervised (pre)training through the same engine and loss path
    as RL (the CPU demo's pretraining stage).
    """


ObjectiveParams = Union[DcpoClipParams, PpoClipParams, GspoParams, DppoTvParams, NllParams]


def dcpo_objective(logprobs, old_logprobs, advantages, mask, params: DcpoClipParams) -> TokenLossOutput:
    """Paper Eq. 3 with dynamic bounds (docs/algorithm.md [dac-objective]).

    ``mask`` is unused: the objective is per token.
    """
    del mask
    return dcpo_token_objective(logprobs, old_logprobs, advantages, params.eps_low, params.eps_high, params.ratio_cap)


def ppo_clip_objective(logprobs, old_logprobs, advantages, mask, params: PpoClipParams) -> TokenLossOutput:
    """GRPO (paper Eq. 12) and DAPO (Eq. 13) token objective with fixed bounds."""
    del mask
    ratio = torch.exp(log_ratio(_as_float(logprobs), _as_float(old_logprobs)))
    adv = broadcast_advantages(advantages, ratio)
    return clipped_surrogate(ratio, adv, 1.0 - params.eps_low, 1.0 + params.eps_high, params.dual_clip_c)


def sequence_log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean log-ratio [B, 1] over response tokens (docs/algorithm.md [choice-gspo-per-sequence])."""
    m = mask.to(logprobs.dtype)
    diff = (logprobs - old_logprobs.detach()) * m
    return (diff.sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp_min(1.0))


GSPO_LOG_RATIO_MAX = 10.0


def gspo_objective(logprobs, old_logprobs, advantages, mask, params: GspoParams) -> TokenLossOutput:
    """GSPO token form (paper Eq. 14; docs/algorithm.md [gspo]).

    s_i = exp(mean_t(logp - oldlogp)); s_{i,t} = sg[s_i] * pi(o_t) / sg[pi(o_t)], which equals s_i in value
    and carries the per-token gradient s_i * d logp_t; clip is applied to the sequence ratio.
    """
    logprobs = _as_float(logprobs)
    seq_lr = sequence_log_ratio(logprobs, _as_float(old_logprobs), mask)
    # The clamp (<= 10, as in the authors' GSPO loss; >= -20 like the token ratio, so exp cannot
    # underflow) acts on the combined token log-ratio, so a sequence outside it gets NO gradient, as
    # in the authors' code: without that, a negative-advantage sequence at ratio e^10 would push with
    # weight e^10 (docs/algorithm.md [gspo]).
    token_lr = torch.clamp(seq_lr.detach() + logprobs - logprobs.detach(), -LOG_RATIO_CLAMP, GSPO_LOG_RATIO_MAX)
    ratio = torch.exp(token_lr)
    adv = broadcast_advantages(advantages, ratio)
    return clipped_surrogate(ratio, adv, 1.0 - params.eps_low, 1.0 + params.eps_high, None)


def dppo_tv_objective(logprobs, old_logprobs, advantages, mask, params: DppoTvParams) -> TokenLossOutput:
    """DPPO Binary-TV (docs/algorithm.md [dppo]): the unclipped surrogate A*r, with the gradient masked
    where the sampled token's probability left the trust region |p - q| <= delta in the direction the
    advantage pushes it. p = exp(logp), q = exp(oldlogp), r = p / q.

    Unlike a ratio clip, the bound is on the probability difference, so a rare token (q = 1e-4) may
    grow a hundredfold while a likely one (q = 0.9) may barely fall. The value of a masked token is
    still A*r (its ratio is detached), so the logged loss is the plain surrogate. ``mask`` is unused.
    """
    del mask
    logprobs, old_logprobs = _as_float(logprobs), _as_float(old_logprobs)
    ratio = torch.exp(log_ratio(logprobs, old_logprobs))
    adv = broadcast_advantages(advantages, ratio)
    moved = logprobs.detach().exp() - old_logprobs.detach().exp()  # p - q
    is_high = (adv > 0) & (moved > params.delta_high)
    is_low = (adv < 0) & (moved < -params.delta_low)
    masked = is_high | is_low
    objective = adv * torch.where(masked, ratio.detach(), ratio)
    return TokenLossOutput(-objective, is_low, is_high, torch.zeros_like(masked))


def nll_objective(logprobs, old_logprobs, advantages, mask, params: NllParams) -> TokenLossOutput:
    """Per-token objective A * log pi(o_t) (REINFORCE form; A = 1 gives the log-likelihood), loss = -that.

    ``old_logprobs`` and ``mask`` are unused (there is no ratio and the objective is per token); nothing
    is ever clipped, so every clip indicator is False.
    """
    del old_logprobs, mask, params
    logprobs = _as_float(logprobs)
    adv = broadcast_advantages(advantages, logprobs)
    never = torch.zeros(logprobs.shape, dtype=torch.bool, device=logprobs.device)
    return TokenLossOutput(-(adv * logprobs), never, never.clone(), never.clone())


def low_var_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi || ref) per token (docs/algorithm.md [kl]): exp(d) - d - 1 with d = ref - logp.

    The inner difference is clamped to +-20 and the result to [-10, 10], as in the GRPO baseline.
    """
    d = torch.clamp(ref_logprobs.detach() - logprobs, -20.0, 20.0)
    return torch.clamp(torch.exp(d) - d - 1.0, -10.0, 10.0)


ObjectiveFn = Callable[..., TokenLossOutput]


@dataclass(frozen=True)
class ObjectiveEntry:
    fn: ObjectiveFn
    params_type: type


OBJECTIVES: Registry[ObjectiveEntry] = Registry("token objective")
OBJECTIVES.register("dcpo", ObjectiveEntry(dcpo_objective, DcpoClipParams))
OBJECTIVES.register("ppo_clip", ObjectiveEntry(ppo_clip_objective, PpoClipParams))
OBJECTIVES.register("gspo", ObjectiveEntry(gspo_objective, GspoParams))
OBJECTIVES.register("dppo_tv", ObjectiveEntry(dppo_tv_objective, DppoTvParams))
OBJECTIVES.register("nll", ObjectiveEntry(nll_objective, NllParams))


def token_objective(name: str, logprobs, old_logprobs, advantages, mask, params: ObjectiveParams) -> TokenLossOutput:
    """Look up objective ``name`` and apply it; the params type must match the objective."""
    entry = OBJECTIVES.get(name)
    if not isinstance(params, entry.params_type):
        raise TypeError(f"objective '{name}' takes {entry.params_type.__name__}, got {type(params).__name__}")
    return entry.fn(logprobs, old_logprobs, advantages, mask, params)
