"""Advantage estimators and their registry.

All estimators take rewards [N] and prompt keys (rows of one prompt group share a key, laid out
contiguously; see grouping.py) and return one advantage per response, broadcast later to its tokens
(outcome reward, gamma = lambda = 1, no critic; docs/algorithm.md [notation]).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .grouping import prompt_groups
from .registry import Registry
from .sas import PromptStatsStore, StdMode, sas_advantages

GRPO_STD_EPS = 1e-6  # GRPO keeps its epsilon; SAS uses a sigma > 1e-8 guard (docs/algorithm.md [choice-grpo-epsilon]).


def grpo_advantages(rewards: torch.Tensor, prompt_keys: Sequence[str], group_size: int | None = None) -> torch.Tensor:
    """GRPO group standardisation (docs/algorithm.md [grpo]): (R - mean) / (unbiased std + 1e-6).

    A group of size 1 uses mean 0 and std 1, as the reference implementation does.
    """
    r64 = rewards.detach().to(torch.float64)
    out = torch.zeros_like(r64)
    for _, start, stop in prompt_groups(prompt_keys, group_size):
        group = r64[start:stop]
        if group.numel() == 1:
            mean, std = 0.0, 1.0
        else:
            mean, std = float(group.mean()), float(group.std(correction=1))
        out[start:stop] = (group - mean) / (std + GRPO_STD_EPS)
    return out.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


@dataclass(frozen=True)
class SasParams:
    """SAS options: the std used for the step's group statistics (docs/algorithm.md [choice-sas-std])."""

    std: StdMode = "unbiased"


@dataclass(frozen=True)
class GrpoAdvantageParams:
    """GRPO standardisation has no options (eps fixed at 1e-6; docs/algorithm.md [choice-grpo-epsilon])."""


@dataclass(frozen=True)
class EstimatorEntry:
    """``fn(rewards, keys, store, params, group_size)``; ``stateful`` estimators need the prompt store."""

    fn: Callable[..., torch.Tensor]
    params_type: type
    stateful: bool


def _sas(rewards, keys, store, params: SasParams, group_size):
    if store is None:
        raise ValueError("the 'sas' estimator needs a PromptStatsStore")
    return sas_advantages(rewards, keys, store, std=params.std, group_size=group_size)


def _grpo(rewards, keys, store, params: GrpoAdvantageParams, group_size):
    del store, params
    return grpo_advantages(rewards, keys, group_size)


ESTIMATORS: Registry[EstimatorEntry] = Registry("advantage estimator")
ESTIMATORS.register("sas", EstimatorEntry(_sas, SasParams, stateful=True))
ESTIMATORS.register("grpo", EstimatorEntry(_grpo, GrpoAdvantageParams, stateful=False))


def compute_advantages(
    name: str,
    rewards: torch.Tensor,
    prompt_keys: Sequence[str],
    params,
    store: PromptStatsStore | None = None,
    group_size: int | None = None,
) -> torch.Tensor:
    """Run estimator ``name``; stateful ones update ``store``."""
    entry = ESTIMATORS.get(name)
    if not isinstance(params, entry.params_type):
        raise TypeError(f"estimator '{name}' takes {entry.params_type.__name__}, got {type(params).__name__}")
    return entry.fn(rewards, prompt_keys, store, params, group_size)
