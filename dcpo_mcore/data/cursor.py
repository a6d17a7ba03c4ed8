"""A resumable, seeded stream of prompt-index batches, epoch after epoch.

Why its own class rather than a torch DataLoader: the whole state is a few integers (plus at most
one batch of indices) that go into the checkpoint as JSON (docs/architecture.md [conv-atomic-checkpoints]), and a
resumed run must draw exactly the batches the uninterrupted run would have drawn.

Semantics:

* Epoch ``e`` visits every index exactly once, in the order of a permutation derived only from
  ``(seed, e)`` -- a private ``random.Random`` seeded with sha256 of "seed:epoch", never the global
  RNG -- or in ``0..n-1`` order when ``shuffle=False``.
* Nothing is dropped: the epoch's last, partial batch is completed with the head of the next
  epoch. So that a batch never holds the same prompt twice (two groups with one SAS key in one step),
  the next epoch's permutation is adjusted stably: its first ``head`` slots take the earliest items
  that are not already in the partial batch, and the displaced items follow right after. This
  adjustment is the only cross-epoch dependency; the state records it (``carry``, ``head``), so the
  epoch's order is rebuilt exactly on resume. Unshuffled cursors never need it.
* ``batch_size <= num_items`` is required, for the same reason (a batch larger than the dataset
  must repeat prompts).
"""
from __future__ import annotations

import hashlib
import random
from typing import Any

from dcpo_mcore.errors import UserValueError

__all__ = ["PromptCursor"]

_STATE_KEYS = ("epoch", "position", "seed", "num_items", "batch_size", "shuffle", "carry", "head")


class PromptCursor:
    """Batches of dataset indices; ``state_dict()`` / ``load_state_dict()`` resume it exactly."""

    def __init__(self, num_items: int, batch_size: int, shuffle: bool = True, seed: int = 0):
        for name, value in (("num_items", num_items), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PromptCursor {name} must be a positive int, not {value!r}")
        if batch_size > num_items:
            raise UserValueError(f"batch size {batch_size} > {num_items} prompts: a batch would repeat prompts; "
                             "lower rollout.prompts_per_step or add training prompts")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"PromptCursor seed must be an int, not {seed!r}")
        self.num_items, self.batch_size, self.shuffle, self.seed = num_items, batch_size, bool(shuffle), seed
        self.epoch = 0      # epoch of the next index to hand out
        self.position = 0   # its place in that epoch's order
        self._carry: list[int] = []  # items of the previous epoch's partial batch that shaped this epoch's order
        self._head = 0               # slots of this epoch's order that had to avoid _carry
        self._order: list[int] | None = None  # cache of the current epoch's order

    def next_batch(self) -> list[int]:
        """The next ``batch_size`` indices (distinct), continuing into the next epoch when needed."""
        batch: list[int] = []
        while len(batch) < self.batch_size:
            order = self._epoch_order()
            take = min(self.batch_size - len(batch), self.num_items - self.position)
            batch.extend(order[self.position:self.position + take])
            self.position += take
            if self.position == self.num_items:
                # The epoch is used up. If the batch is still partial, the next epoch's head must
                # avoid what it already holds; an exactly filled batch leaves nothing to avoid.
                partial = len(batch) < self.batch_size
                self._start_epoch(self.epoch + 1, list(batch) if partial else [],
                                  self.batch_size - len(batch) if partial else 0)
        return batch

    def _start_epoch(self, epoch: int, carry: list[int], head: int) -> None:
        self.epoch, self.position, self._carry, self._head, self._order = epoch, 0, carry, head, None

    def _epoch_order(self) -> list[int]:
        if self._order is None:
            order = list(range(self.num_items))
            if self.shuffle:
                random.Random(_epoch_seed(self.seed, self.epoch)).shuffle(order)
            self._order = _avoid_in_head(order, set(self._carry), self._head)
        return self._order

    @property
    def batches_per_epoch(self) -> float:
        return self.num_items / self.batch_size

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON-able state: epoch, position, the settings, and the epoch's head adjustment."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_items": self.num_items,
                "batch_size": self.batch_size, "shuffle": self.shuffle, "carry": list(self._carry),
                "head": self._head}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()``. The dataset size, seed and shuffle flag must match this cursor's
        (they fix the order); a different batch size is allowed and takes effect from the next batch."""
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"prompt cursor state lacks {', '.join(missing)}; it is not a PromptCursor.state_dict()")
        changed = [f"{k} {state[k]!r} -> {getattr(self, k)!r}" for k in ("num_items", "seed", "shuffle")
                   if state[k] != getattr(self, k)]
        if changed:
            raise UserValueError(f"cannot resume the prompt cursor: {'; '.join(changed)} since the checkpoint "
                             "(a changed dataset or data seed reorders every epoch); restore the original "
                             "files/seed, or start the data order afresh")
        epoch, position, head, carry = state["epoch"], state["position"], state["head"], state["carry"]
        ok = (all(isinstance(v, int) and not isinstance(v, bool) for v in (epoch, position, head))
              and epoch >= 0 and 0 <= position < self.num_items and 0 <= head <= position
              and isinstance(carry, list) and all(isinstance(i, int) and 0 <= i < self.num_items for i in carry))
        if not ok:
            raise UserValueError(f"prompt cursor state is corrupt (epoch={epoch!r}, position={position!r}, head={head!r}, "
                             f"carry of {len(carry) if isinstance(carry, list) else type(carry).__name__}); "
                             "resume from another checkpoint")
        self._start_epoch(epoch, list(carry), head)
        self.position = position


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 64-bit seed that depends only on (seed, epoch), identical on every platform and Python."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:8], "little")


def _avoid_in_head(order: list[int], avoid: set[int], head: int) -> list[int]:
    """Stable reorder so that ``order[:head]`` holds no item of ``avoid``; the items passed over
    keep their relative order right after the head. Needs ``len(order) - len(avoid) >= head``."""
    if not avoid or head == 0:
        return order
    front, passed, i = [], [], 0
    while len(front) < head:
        (passed if order[i] in avoid else front).append(order[i])
        i += 1
    return front + passed + order[i:]
