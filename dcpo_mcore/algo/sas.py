"""Smooth Advantage Standardisation (SAS) with persistent per-prompt statistics.

Paper: DCPO §3 Eqs. 5-7 and A.7 Eqs. 29-30; docs/algorithm.md [sas-update] (exact update) and
[sas-persistence].

For prompt k with previous state (n, mu_k, sigma_k) and current rewards R (one group):
    merge first:  mu_tot = (n*mu_k + mu_new)/(n+1)
                  sigma_tot^2 = [n*sigma_k^2 + sigma_new^2 + n/(n+1)*(mu_new - mu_k)^2]/(n+1)
    then standardise with both the step's and the cumulative statistics, blend with weights from the visit
    number i = n+1, and keep the blend of smaller magnitude (Eq. 7; ties go to SA_tot).
The state after the merge is written back, so it must live in the checkpoint
(docs/algorithm.md [choice-sas-in-checkpoint]).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import torch

from .grouping import prompt_groups

StdMode = Literal["unbiased", "population"]
# docs/algorithm.md [choice-sas-std]: divide by sigma only when it is clearly non-zero; rounding noise in an
# all-equal group must give 0.
STD_FLOOR = 1e-8


@dataclass(frozen=True)
class PromptStats:
    """Statistics of one prompt after ``visits`` training batches (docs/algorithm.md [sas-state])."""

    visits: int
    mean: float
    std: float


class PromptStatsStore:
    """Per-prompt ``(visits, mean, std)`` kept across steps and saved inside checkpoints.

    Values are Python floats (float64) so a save/load round trip is bit-exact.
    """

    STATE_VERSION = 1

    def __init__(self) -> None:
        self._stats: dict[str, PromptStats] = {}

    def get(self, key: str) -> PromptStats:
        return self._stats.get(key, PromptStats(0, 0.0, 0.0))

    def set(self, key: str, stats: PromptStats) -> None:
        self._stats[key] = stats

    def __len__(self) -> int:
        return len(self._stats)

    def __contains__(self, key: object) -> bool:
        return key in self._stats

    def items(self) -> Iterator[tuple[str, PromptStats]]:
        return iter(self._stats.items())

    def state_dict(self) -> dict:
        keys = list(self._stats)
        return {
            "version": self.STATE_VERSION,
            "keys": keys,
            "visits": [self._stats[k].visits for k in keys],
            "mean": [self._stats[k].mean for k in keys],
            "std": [self._stats[k].std for k in keys],
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != self.STATE_VERSION:
            raise ValueError(f"PromptStatsStore state version {state.get('version')!r} != {self.STATE_VERSION}")
        keys, visits, means, stds = state["keys"], state["visits"], state["mean"], state["std"]
        if not (len(keys) == len(visits) == len(means) == len(stds)):
            raise ValueError("PromptStatsStore state is corrupt: keys/visits/mean/std lengths differ")
        if len(set(keys)) != len(keys):
            raise ValueError("PromptStatsStore state is corrupt: duplicate prompt keys")
        self._stats = {
            k: PromptStats(int(v), float(m), float(s)) for k, v, m, s in zip(keys, visits, means, stds)
        }


def group_std(rewards: torch.Tensor, std: StdMode) -> float:
    """Std of one group: unbiased (authors' code, default) or population (paper A.7).

    See docs/algorithm.md [choice-sas-std].
    """
    if std not in ("unbiased", "population"):
        raise ValueError(f"unknown std mode '{std}'; valid: unbiased, population")
    if rewards.numel() < 2:
        return 0.0  # a single sample carries no spread; unbiased std would be NaN
    return float(rewards.std(correction=1 if std == "unbiased" else 0))


def merge_stats(prev: PromptStats, mean_new: float, std_new: float) -> PromptStats:
    """Pooled statistics of equally weighted visits, including the current one.

    Paper Eq. 30; docs/algorithm.md [sas-update].
    """
    n = prev.visits
    if n == 0:
        return PromptStats(1, mean_new, std_new)
    mean_tot = (n * prev.mean + mean_new) / (n + 1)
    var_tot = (n * prev.std**2 + std_new**2 + (n / (n + 1)) * (mean_new - prev.mean) ** 2) / (n + 1)
    return PromptStats(n + 1, mean_tot, math.sqrt(max(var_tot, 0.0)))


def _standardise(rewards: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    if std <= STD_FLOOR:
        return torch.zeros_like(rewards)
    return (rewards - mean) / std


def smooth_group_advantages(rewards: torch.Tensor, mean_new: float, std_new: float, merged: PromptStats):
    """Eq. 6-7 for one group, in float64: pick the smaller-magnitude smoothed advantage."""
    i = merged.visits
    a_new = _standardise(rewards, mean_new, std_new)
    a_tot = _standardise(rewards, merged.mean, merged.std)
    sa_new = ((i - 1) / i) * a_new + (1 / i) * a_tot
    sa_tot = (1 / i) * a_new + ((i - 1) / i) * a_tot
    return torch.where(sa_new.abs() < sa_tot.abs(), sa_new, sa_tot)


def sas_advantages(
    rewards: torch.Tensor,
    prompt_keys: Sequence[str],
    store: PromptStatsStore,
    std: StdMode = "unbiased",
    group_size: int | None = None,
) -> torch.Tensor:
    """SAS advantages [N] for rewards [N]; rows sharing a key form a group. Updates ``store`` in place.

    Groups are consecutive runs of one key (optionally cut every ``group_size`` rows); a key that appears as
    two groups in one batch is merged twice, in batch order (see grouping.py).
    """
    if rewards.dim() != 1 or rewards.numel() != len(prompt_keys):
        raise ValueError(f"rewards must be [N] with N == len(prompt_keys); got {tuple(rewards.shape)} and {len(prompt_keys)}")
    r64 = rewards.detach().to(torch.float64)
    out = torch.zeros_like(r64)
    for key, start, stop in prompt_groups(prompt_keys, group_size):
        group = r64[start:stop]
        mean_new, std_new = float(group.mean()), group_std(group, std)
        merged = merge_stats(store.get(key), mean_new, std_new)
        out[start:stop] = smooth_group_advantages(group, mean_new, std_new, merged)
        store.set(key, merged)
    return out.to(rewards.dtype if rewards.is_floating_point() else torch.float32)
