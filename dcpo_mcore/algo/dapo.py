"""DAPO-specific pieces (docs/algorithm.md [dapo]): the dynamic-sampling group filter and overlong reward shaping."""
from __future__ import annotations

from typing import Sequence

import torch

from .grouping import prompt_groups


def dynamic_sampling_keep(values: torch.Tensor, prompt_keys: Sequence[str], group_size: int | None = None) -> torch.Tensor:
    """Rows [N] to keep: groups whose ``values`` are not all equal.

    The trainer passes the rewards the advantages are computed from (after overlong shaping): an
    all-equal group has zero variance, so group standardisation gives it zero advantage everywhere.
    The DAPO paper states the filter on accuracy; without overlong shaping the two are the same, and
    with it an all-correct group whose lengths differ still carries signal, so it is kept
    (docs/algorithm.md [dapo-dynamic-sampling]).
    """
    keep = torch.zeros(values.shape[0], dtype=torch.bool)
    for _, start, stop in prompt_groups(prompt_keys, group_size):
        group = values[start:stop]
        keep[start:stop] = bool((group != group[0]).any())
    return keep


def overlong_penalty(
    response_lengths: torch.Tensor, max_response_len: int, buffer_len: int, penalty_factor: float = 1.0
) -> torch.Tensor:
    """Soft overlong punishment on RESPONSE length (docs/algorithm.md [dapo-overlong]).

    The authors' code passed the prompt length, so its penalty was always 0
    (docs/algorithm.md [choice-overlong-length]).

    0 for L <= L_max - buffer, then linear down to -penalty_factor at L = L_max.
    """
    if buffer_len <= 0:
        return torch.zeros(response_lengths.shape, dtype=torch.float32)
    expected = max_response_len - buffer_len
    excess = response_lengths.to(torch.float32) - expected
    return torch.clamp(-excess / buffer_len * penalty_factor, max=0.0)
