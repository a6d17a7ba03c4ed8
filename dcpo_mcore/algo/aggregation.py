"""Loss aggregations over response tokens, each with an explicit global denominator.

docs/algorithm.md [otm] and [baselines]. Every aggregation is a sum of per-row or per-token terms
divided by a number the caller computes once for the whole optimizer step (across micro-batches, DP ranks
and PP stages). Summing the micro-batch losses therefore gives exactly the full-batch loss and gradient,
whatever the split (docs/algorithm.md [global-denominators]: never rescale per micro-batch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from .registry import Registry

Denominator = Literal["prompts", "responses", "tokens"]


def _row_token_means(token_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of each row; a row with no tokens contributes 0 (not NaN)."""
    m = mask.to(token_values.dtype)
    return (token_values * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def only_token_mean(token_values: torch.Tensor, mask: torch.Tensor, num_prompts: float) -> torch.Tensor:
    """OTM, the paper's canonical form (paper Eq. 8; docs/algorithm.md [otm-canonical]).

    (1/num_prompts) * sum over rows of the masked row mean, where ``num_prompts`` is the GLOBAL number of
    prompts in the optimizer step (responses in the mini-batch / G). Each response weighs by its advantage,
    independent of its length; responses are summed, not averaged.
    """
    return _row_token_means(token_values, mask).sum() / num_prompts


def token_sum(token_values: torch.Tensor, mask: torch.Tensor, num_responses: float) -> torch.Tensor:
    """OTM ``token_sum`` variant (docs/algorithm.md [otm-token-sum]): (1/|M|) * sum of all response tokens' values."""
    return (token_values * mask.to(token_values.dtype)).sum() / num_responses


def token_mean(token_values: torch.Tensor, mask: torch.Tensor, num_tokens: float) -> torch.Tensor:
    """DAPO token-level mean (docs/algorithm.md [dapo]), exact: sum / global number of response tokens."""
    return (token_values * mask.to(token_values.dtype)).sum() / num_tokens


def seq_mean_token_mean(token_values: torch.Tensor, mask: torch.Tensor, num_responses: float) -> torch.Tensor:
    """GRPO/GSPO seq-mean-token-mean (docs/algorithm.md [grpo]): mean over responses of per-response token means."""
    return _row_token_means(token_values, mask).sum() / num_responses


@dataclass(frozen=True)
class AggregationEntry:
    """An aggregation and which global count normalises it."""

    fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    denominator: Denominator


AGGREGATIONS: Registry[AggregationEntry] = Registry("loss aggregation")
AGGREGATIONS.register("otm", AggregationEntry(only_token_mean, "prompts"))
AGGREGATIONS.register("token_sum", AggregationEntry(token_sum, "responses"))
AGGREGATIONS.register("token_mean", AggregationEntry(token_mean, "tokens"))
AGGREGATIONS.register("seq_mean_token_mean", AggregationEntry(seq_mean_token_mean, "responses"))


@dataclass(frozen=True)
class GlobalCounts:
    """Counts over the whole optimizer step (all micro-batches, DP ranks and PP stages), fixed up front."""

    prompts: float
    responses: float
    tokens: float

    def get(self, kind: Denominator) -> float:
        value = {"prompts": self.prompts, "responses": self.responses, "tokens": self.tokens}[kind]
        if value <= 0:
            raise ValueError(f"global {kind} count must be > 0, got {value}")
        return value


def aggregate(name: str, token_values: torch.Tensor, mask: torch.Tensor, counts: GlobalCounts) -> torch.Tensor:
    """Apply aggregation ``name`` normalised by the matching global count."""
    entry = AGGREGATIONS.get(name)
    return entry.fn(token_values, mask, counts.get(entry.denominator))
