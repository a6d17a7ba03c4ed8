"""How rows of a rollout batch form prompt groups.

A group is a maximal run of consecutive rows with the same prompt key (the trainer lays each prompt's n
samples out contiguously). A key that shows up again later in the batch (the same prompt drawn twice in one
step) forms a second group; estimators process groups in batch order, so SAS merges them sequentially and
none is lost (docs/algorithm.md [choice-repeated-prompt]: the authors' code kept only the last write).
"""
from __future__ import annotations

from typing import Sequence


def prompt_groups(prompt_keys: Sequence[str], group_size: int | None = None) -> list[tuple[str, int, int]]:
    """Return ``(key, start, stop)`` row ranges in batch order.

    With ``group_size`` the runs are further cut every ``group_size`` rows, which separates two back-to-back
    groups of the same prompt.
    """
    groups: list[tuple[str, int, int]] = []
    start = 0
    n = len(prompt_keys)
    for row in range(1, n + 1):
        run_ends = row == n or prompt_keys[row] != prompt_keys[start]
        size_full = group_size is not None and row - start == group_size
        if run_ends or size_full:
            groups.append((prompt_keys[start], start, row))
            start = row
    return groups
