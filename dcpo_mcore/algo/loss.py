"""The policy loss of one micro-batch: token objective (+ optional KL), aggregated with global counts.

This is the single pure function every engine adapter calls (docs/architecture.md [conv-pure-algo]: parallelism stays
outside algo/).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .aggregation import GlobalCounts, aggregate
from .metrics import ClipCounts, clip_counts
from .objectives import ObjectiveParams, low_var_kl, token_objective


@dataclass(frozen=True)
class LossSpec:
    """Everything the loss needs besides tensors: chosen by name once when the trainer is built."""

    objective: str
    objective_params: ObjectiveParams
    aggregation: str
    kl_coef: float = 0.0
    entropy_coef: float = 0.0


@dataclass
class PolicyLossOutput:
    loss: torch.Tensor  # scalar, differentiable; sum it over micro-batches, never average
    policy_loss: torch.Tensor  # detached aggregated -objective
    kl: torch.Tensor | None  # detached aggregated KL, when a reference is used
    clip: ClipCounts
    log_ratio_abs_max: torch.Tensor  # detached; 0 at the first PPO epoch (invariant check)


def policy_loss(
    spec: LossSpec,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    counts: GlobalCounts,
    ref_logprobs: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    token_weights: torch.Tensor | None = None,
) -> PolicyLossOutput:
    """Loss of one micro-batch (tensors [B, T], advantages [B] or [B, T], mask [B, T]).

    ``token_weights`` [B, T] (constants, e.g. the truncated importance weights of off_policy.py) scale
    each token's policy-gradient term before aggregation; the KL and entropy terms are not weighted.
    """
    out = token_objective(spec.objective, logprobs, old_logprobs, advantages, mask, spec.objective_params)
    token_loss = out.loss if token_weights is None else out.loss * token_weights.detach()
    pg = aggregate(spec.aggregation, token_loss, mask, counts)
    total = pg
    kl_value = None
    if spec.kl_coef > 0:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs reference log-probs")
        kl = aggregate(spec.aggregation, low_var_kl(logprobs, ref_logprobs), mask, counts)
        total = total + spec.kl_coef * kl
        kl_value = kl.detach()
    if spec.entropy_coef > 0:
        if entropy is None:
            raise ValueError("entropy_coef > 0 needs differentiable entropies")
        total = total - spec.entropy_coef * aggregate(spec.aggregation, entropy, mask, counts)
    m = mask.bool()
    diff = (logprobs.detach() - old_logprobs.detach()).abs()
    lr_max = diff[m].max() if m.any() else torch.zeros((), dtype=diff.dtype)
    return PolicyLossOutput(total, pg.detach(), kl_value, clip_counts(out, mask), lr_max)
