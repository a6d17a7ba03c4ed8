"""The few collectives a checkpoint needs, degrading to no-ops in a single process.

The manager must work both inside a launched job (every rank calls it) and in a plain single process
(unit tests, tools) where ``torch.distributed`` is not initialised; keeping that switch here keeps the
manager readable. Only picklable Python objects (paths, strings, small dicts) travel, so
``broadcast_object_list`` / ``all_gather_object`` are enough and work on gloo and NCCL alike.
"""
from __future__ import annotations

from typing import Any

import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (the others' argument is ignored). Also a barrier."""
    if not active() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def first_error(error: str | None) -> str | None:
    """Every rank's own failure (or None) in, the first failure of any rank out, on every rank.

    Used instead of a bare barrier after per-rank work, so that a rank that failed makes every rank
    raise rather than leaving the others to rename an incomplete checkpoint (or hang).
    """
    if not active() or dist.get_world_size() == 1:
        return error
    errors: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    for r, e in enumerate(errors):
        if e is not None:
            return f"rank {r}: {e}"
    return None
