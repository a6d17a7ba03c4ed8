"""The few collectives over the trainer's ranks that the loop, the checkpoint manager and the demo need
(everything heavier lives in engine/ and sync/).

Rank 0 talks to SGLang and the graders; the other ranks only need the results, so they are shipped
as one pickled object per step. That is small next to the weights (token ids and floats of one
rollout batch, paths, short strings) and keeps every rank's algorithm state (SAS store, cursor)
bit-identical. Every function also works in a plain single process (unit tests, tools) where
``torch.distributed`` is not initialised: it degrades to the identity.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_rank0() -> bool:
    return rank() == 0


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (the others pass anything, usually None). Also a barrier."""
    if not active() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_device())  # NCCL sends from the rank's own GPU
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a preemption signal)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


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


def _device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
