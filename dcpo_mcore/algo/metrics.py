"""Per-step metric tensors of the paper: TCR (paper Eq. 9), RUR (paper Eq. 10) and advantage statistics
(docs/algorithm.md [tcr], [rur]).

Everything returns detached tensors: no ``.item()`` (it would force a sync inside the loss) and no
collectives. The trainer sums or gathers these across micro-batches and ranks, then reduces once per step.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .clipping import TokenLossOutput


@dataclass
class ClipCounts:
    """Masked token counts of one micro-batch (float tensors so they can be summed/all-reduced)."""

    clipped: torch.Tensor  # TCR event [psi2 < psi1]: low or high
    low: torch.Tensor  # A < 0 and r < lower bound
    high: torch.Tensor  # A > 0 and r > upper bound
    dual: torch.Tensor  # A < 0 held at the dual-clip floor A*c (not part of TCR)
    tokens: torch.Tensor  # response tokens, A = 0 tokens included (docs/algorithm.md [tcr])

    def as_tensor(self) -> torch.Tensor:
        """Stack as [5] for one all-reduce or for stacking micro-batches into [M, 5]."""
        return torch.stack([getattr(self, f.name) for f in fields(self)])


def clip_counts(out: TokenLossOutput, mask: torch.Tensor) -> ClipCounts:
    m = mask.bool()
    count = lambda t: (t & m).sum().to(torch.float64)  # noqa: E731 - tiny local helper
    return ClipCounts(count(out.is_clipped), count(out.is_clipped_low), count(out.is_clipped_high),
                      count(out.is_dual_clipped), m.sum().to(torch.float64))


def clip_ratios(per_micro: torch.Tensor) -> dict[str, torch.Tensor]:
    """Step-level clip metrics from stacked per-micro-batch counts [M, 5] (rows from ``as_tensor``).

    ``token_clip_ratio`` is the paper's TCR: the MEAN over micro-batches of each micro-batch's clipped
    fraction (Eq. 9, verl's averaged pg_clipfrac). ``token_clip_ratio_global`` is the token-weighted fraction.
    ``low_ratio``/``high_ratio``/``dual_ratio`` are micro-batch means like TCR. Empty micro-batches are skipped;
    ``micro_batches`` counts the others, so means over several optimizer steps can be formed exactly.
    """
    per_micro = per_micro.to(torch.float64).reshape(-1, 5)
    tokens = per_micro[:, 4]
    valid = tokens > 0
    fracs = per_micro[valid, :4] / tokens[valid].unsqueeze(-1)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    mean = fracs.mean(0) if fracs.shape[0] else torch.full((4,), float("nan"), dtype=torch.float64)
    total = tokens.sum()
    return {
        "token_clip_ratio": mean[0],
        "low_ratio": mean[1],
        "high_ratio": mean[2],
        "dual_ratio": mean[3],
        "token_clip_ratio_global": per_micro[:, 0].sum() / total if total > 0 else nan,
        "micro_batches": valid.sum().to(torch.float64),
    }


def nonzero_advantage_ratio(advantages: torch.Tensor) -> torch.Tensor:
    """RUR (paper Eq. 10): share of responses whose advantage is exactly non-zero.

    Exact test on purpose (docs/algorithm.md [rur]): with SAS an advantage can be tiny but non-zero and
    still carries signal.
    """
    return (advantages.detach() != 0).to(torch.float64).mean()


def advantage_stats(advantages: torch.Tensor) -> dict[str, torch.Tensor]:
    a = advantages.detach().to(torch.float64)
    return {
        "mean": a.mean(),
        "std": a.std(correction=0) if a.numel() > 1 else torch.zeros((), dtype=torch.float64),
        "abs_mean": a.abs().mean(),
        "max": a.max(),
        "min": a.min(),
        "nonzero_ratio": nonzero_advantage_ratio(a),
    }
