"""Behaviour-policy correction: truncated importance weights of the sampler's tokens (docs/algorithm.md [tis]).

The DCPO ratio and its clip bounds use q = the training engine's recomputed old log-probs (the policy
before this step's updates), as the paper defines them. The tokens, though, were drawn by the rollout
engine, whose distribution differs: by kernels and precision at any staleness, and by whole weight
versions when rollouts are generated ahead of training. The truncated importance weight

    w_t = min(pi_old(y_t) / pi_behaviour(y_t), C)

multiplies each token's policy-gradient term (a constant: no gradient flows through it). Tokens without
a sampler log-prob get w = 1 and are not counted in the statistics.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TisStats:
    """Over the tokens that have a sampler log-prob."""

    tokens: int
    weight_sum: float  # of the truncated weights
    truncated: int  # tokens whose raw weight was above the cap

    @property
    def weight_mean(self) -> float:
        return self.weight_sum / self.tokens if self.tokens else float("nan")

    @property
    def truncated_fraction(self) -> float:
        return self.truncated / self.tokens if self.tokens else float("nan")


def truncated_importance_weights(old_logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor | list[float],
                                 cap: float) -> tuple[torch.Tensor, TisStats]:
    """``min(exp(old - behaviour), cap)`` per token (float32), 1 where the behaviour log-prob is not finite."""
    if cap < 1.0:
        raise ValueError(f"the truncation cap must be >= 1 (a cap below 1 shrinks every on-policy token), got {cap}")
    old = old_logprobs.detach().to(torch.float32)
    behaviour = torch.as_tensor(behaviour_logprobs, dtype=torch.float32)
    if old.shape != behaviour.shape:
        raise ValueError(f"old log-probs {tuple(old.shape)} and behaviour log-probs {tuple(behaviour.shape)} differ")
    known = torch.isfinite(behaviour) & torch.isfinite(old)
    raw = torch.exp(torch.where(known, old - behaviour, torch.zeros_like(old)))
    weights = torch.clamp(raw, max=cap)
    stats = TisStats(tokens=int(known.sum()), weight_sum=float(weights[known].sum()),
                     truncated=int((raw[known] > cap).sum()))
    return weights, stats


def merge_tis_stats(parts: list[TisStats]) -> TisStats:
    return TisStats(tokens=sum(p.tokens for p in parts), weight_sum=sum(p.weight_sum for p in parts),
                    truncated=sum(p.truncated for p in parts))
