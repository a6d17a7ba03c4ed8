"""Dynamic-Adaptive Clipping (DAC) and the DCPO token objective.

Paper: DCPO (arXiv 2509.02333) §2 Eqs. 3-4, A.5 Eqs. 21-27;
docs/algorithm.md [dac-bounds] and [dac-objective].

The constraint |(r - 1) * p| <= eps with p = r * q (q = old token probability) gives per-token ratio bounds
    l(q) = 0.5 + 0.5 * sqrt(max(1 - 4 * eps_low / q, 0))        in [0.5, 1)
    h(q) = min(0.5 + 0.5 * sqrt(1 + 4 * eps_high / q), r_max)   > 1, decreasing in q
so rare tokens (small q) get a wider trust region than a fixed [1 - eps, 1 + eps] would allow.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# docs/algorithm.md [choice-q-floor]: exp(old_logprob) can underflow to exactly 0; a floor keeps l(q) = 0.5
# there instead of the authors' code's 1.0, and keeps 4 * eps / q finite in float32.
MIN_OLD_PROB = 1e-30
# docs/algorithm.md [choice-logratio-clamp]: bound the log-ratio before exp so an overflow cannot turn A = 0
# tokens into 0 * inf = NaN. Tokens this far out are already in zero-gradient regions, so the clamp changes
# no gradient that matters.
LOG_RATIO_CLAMP = 20.0


def _as_float(t: torch.Tensor) -> torch.Tensor:
    """Clip arithmetic needs at least float32: 4 * eps / 1e-30 overflows float16."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def dynamic_clip_bounds(
    old_logprobs: torch.Tensor, eps_low: float = 0.16, eps_high: float = 0.2, ratio_cap: float = 10.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ratio bounds (lower, upper) from the old log-probs (paper Eq. 4/27; docs/algorithm.md [dac-bounds]).

    One ``ratio_cap`` (the paper's r_max) caps the upper bound for positive advantages and is reused as the
    dual-clip constant for negative ones (docs/algorithm.md [choice-one-ratio-cap]). Returns tensors of the same
    shape, no gradient.
    """
    q = _as_float(old_logprobs.detach()).exp().clamp_min(MIN_OLD_PROB)
    lower = 0.5 + 0.5 * torch.sqrt(torch.clamp(1.0 - 4.0 * eps_low / q, min=0.0))
    upper = torch.clamp(0.5 + 0.5 * torch.sqrt(1.0 + 4.0 * eps_high / q), max=ratio_cap)
    return lower, upper


def log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor) -> torch.Tensor:
    """logp - oldlogp clamped to [-20, 20] (docs/algorithm.md [choice-logratio-clamp])."""
    return torch.clamp(logprobs - old_logprobs.detach(), -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def broadcast_advantages(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-response advantages [B] broadcast over tokens [B, T]; per-token advantages pass through."""
    if advantages.dim() == like.dim() - 1:
        advantages = advantages.unsqueeze(-1)
    return advantages.detach().to(like.dtype if like.is_floating_point() else torch.float32)


@dataclass
class TokenLossOutput:
    """Per-token loss (= minus the surrogate objective) and detached clip indicators.

    is_clipped is the paper's TCR event [psi2 < psi1] (docs/algorithm.md [tcr]): (A>0 and r>upper) or (A<0 and r<lower);
    is_dual_clipped counts A<0 tokens held at A*c (not part of TCR, reported separately).
    """

    loss: torch.Tensor
    is_clipped_low: torch.Tensor
    is_clipped_high: torch.Tensor
    is_dual_clipped: torch.Tensor

    @property
    def is_clipped(self) -> torch.Tensor:
        return self.is_clipped_low | self.is_clipped_high


def clipped_surrogate(
    ratio: torch.Tensor,
    adv: torch.Tensor,
    lower: torch.Tensor | float,
    upper: torch.Tensor | float,
    dual_clip_c: float | None,
) -> TokenLossOutput:
    """PPO pessimistic surrogate with (possibly per-token) bounds and an optional dual clip.

    psi_c = min(A*r, A*clip(r, lower, upper)); for A < 0 and a dual clip c: psi = max(psi_c, A*c).
    Gradient flows iff (A > 0 and r < upper) or (A < 0 and lower < r [< c]).
    """
    lower_t = torch.as_tensor(lower, dtype=ratio.dtype, device=ratio.device)
    upper_t = torch.as_tensor(upper, dtype=ratio.dtype, device=ratio.device)
    surrogate = adv * ratio
    clipped = adv * torch.minimum(torch.maximum(ratio, lower_t), upper_t)
    objective = torch.minimum(surrogate, clipped)
    r = ratio.detach()
    is_low = (adv < 0) & (r < lower_t)
    is_high = (adv > 0) & (r > upper_t)
    if dual_clip_c is None:
        is_dual = torch.zeros_like(is_low)
    else:
        dual_floor = adv * dual_clip_c
        is_dual = (adv < 0) & (objective.detach() < dual_floor)
        objective = torch.where(adv < 0, torch.maximum(objective, dual_floor), objective)
    return TokenLossOutput(-objective, is_low, is_high, is_dual)


def dcpo_token_objective(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float = 0.16,
    eps_high: float = 0.2,
    ratio_cap: float = 10.0,
) -> TokenLossOutput:
    """DCPO token objective with dynamic bounds and the dual clip at r_max.

    Paper Eq. 3; docs/algorithm.md [dac-objective].

    Closed form: A >= 0: psi = A*min(r, h(q)); A < 0: psi = A*min(max(r, l(q)), r_max).
    """
    lower, upper = dynamic_clip_bounds(old_logprobs, eps_low, eps_high, ratio_cap)
    lr = log_ratio(_as_float(logprobs), _as_float(old_logprobs))
    ratio = torch.exp(lr)
    adv = broadcast_advantages(advantages, ratio)
    return clipped_surrogate(ratio, adv, lower.to(ratio.dtype), upper.to(ratio.dtype), ratio_cap)


def dcpo_token_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float = 0.16,
    eps_high: float = 0.2,
    ratio_cap: float = 10.0,
) -> torch.Tensor:
    """Per-token DCPO loss (= minus the objective), same shape as ``logprobs``.

    ``advantages`` is per response ([B] for [B, T] log-probs) or per token (same shape).
    """
    return dcpo_token_objective(logprobs, old_logprobs, advantages, eps_low, eps_high, ratio_cap).loss
