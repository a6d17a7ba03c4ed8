"""Where each step's rollout batch comes from: made when the step asks for it, or ahead of training.

Chosen once in setup (:func:`build_producer`), from ``rollout.max_staleness``; the loop and the
rollout stage call the same methods either way, so neither has an ``if`` for it
(docs/algorithm.md [async-rollout]). Only rank 0 generates: on the other ranks the on-policy producer
is built without a generator and only its no-op push hooks are called.

Step timing (``step_timing``), on rank 0:

* ``timing/trainer_idle_seconds``: the trainer waiting for its batch, plus (push_mode=wait) waiting
  before the push for the batches that need the old weights;
* ``timing/rollout_idle_seconds``: the servers with nothing to generate (on-policy: the step outside
  generation; ahead: rank 0's generation thread waiting for a weight version);
* ``timing/overlap_ratio``: the share of the taken batch's generation time hidden behind training,
  1 - (both waits above) / (its generation seconds), at least 0 (0 on-policy);
* ``timing/orchestration_seconds``: the step outside generation waits, the update, the push, evaluation
  and the checkpoint: broadcasts, checks, metrics and logging.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, ContextManager

from .ahead import AheadBuffer


class OnPolicyProducer:
    """Every batch generated when its step asks for it, with the weights of the step before."""

    max_staleness = 0

    def __init__(self, generate: Callable[[int], Any] | None):
        self._generate = generate
        self._wait = self._generation = 0.0

    def take(self, step: int) -> Any:
        t0 = time.perf_counter()
        batch = self._generate(step)
        self._wait = self._generation = time.perf_counter() - t0
        return batch

    def before_push(self, version: int) -> float:
        return 0.0

    def after_push(self, version: int) -> None:
        pass

    def quiet(self) -> ContextManager[None]:
        return contextlib.nullcontext()

    def buffered(self) -> dict[int, Any]:
        return {}

    def close(self) -> None:
        pass

    def step_timing(self, phases: dict[str, float], push_wait: float) -> dict[str, float]:
        step = phases["timing/step_seconds"]
        return _timing(phases, self._wait, push_wait, rollout_idle=max(step - self._generation, 0.0),
                       overlap=0.0)


class AheadProducer:
    """Rank 0's generation thread (:class:`~dcpo_mcore.trainer.ahead.AheadBuffer`) runs up to K steps ahead.

    ``wait_for_generation`` (push_mode=wait): a push first waits for every batch that needs the weights
    it replaces, so each batch is generated with exactly one version, v(t) = max(t-1-K, first). Otherwise
    the push pauses the servers' generation in flight (WeightSync's pause_mode) and a batch may span two
    versions.
    """

    def __init__(self, generate: Callable[[int], Any], *, first: int, last_step: int, max_staleness: int,
                 wait_for_generation: bool, preloaded: dict[int, Any] | None = None,
                 abort: Callable[[], None] | None = None):
        self.max_staleness = max_staleness
        self._wait_for_generation, self._abort = wait_for_generation, abort
        self._buffer = AheadBuffer(generate, first=first, last_step=last_step, max_staleness=max_staleness,
                                   preloaded=preloaded)
        self._wait = self._generation = 0.0
        self._idle_mark = 0.0

    def take(self, step: int) -> Any:
        batch, self._wait = self._buffer.take(step)
        self._generation = self._buffer.generation_seconds.pop(step, 0.0)  # 0 for a batch from the checkpoint
        return batch

    def before_push(self, version: int) -> float:
        return self._buffer.wait_before_push(version) if self._wait_for_generation else 0.0

    def after_push(self, version: int) -> None:
        self._buffer.pushed(version)

    def quiet(self) -> ContextManager[None]:
        return self._buffer.quiet()

    def buffered(self) -> dict[int, Any]:
        return self._buffer.buffered()

    def close(self) -> None:
        if self._abort is not None:  # a batch in progress would otherwise hold the thread until it is done
            self._abort()
        self._buffer.close()

    def step_timing(self, phases: dict[str, float], push_wait: float) -> dict[str, float]:
        idle, self._idle_mark = self._buffer.rollout_idle_seconds - self._idle_mark, self._buffer.rollout_idle_seconds
        # The trainer waits for generation in two places: for its own batch, and (push_mode=wait) before
        # the push, for the batches that need the weights it replaces. What it did not wait for was hidden.
        waited = self._wait + push_wait
        overlap = 1.0 - min(waited / self._generation, 1.0) if self._generation > 0 else 1.0
        return _timing(phases, self._wait, push_wait, rollout_idle=idle, overlap=overlap)


def _timing(phases: dict[str, float], batch_wait: float, push_wait: float, *, rollout_idle: float,
            overlap: float) -> dict[str, float]:
    accounted = batch_wait + push_wait + sum(phases.get(f"timing/{k}_seconds", 0.0)
                                             for k in ("update", "sync", "eval", "save"))
    return {"timing/trainer_idle_seconds": batch_wait + push_wait, "timing/rollout_idle_seconds": rollout_idle,
            "timing/overlap_ratio": overlap,
            "timing/orchestration_seconds": max(phases["timing/step_seconds"] - accounted, 0.0)}


def build_producer(generate: Callable[[int], Any] | None, *, max_staleness: int, push_mode: str, first: int,
                   last_step: int, preloaded: dict[int, Any] | None = None,
                   abort: Callable[[], None] | None = None) -> OnPolicyProducer | AheadProducer:
    """``generate`` is rank 0's (None elsewhere: those ranks only take part in the collectives)."""
    if max_staleness == 0 or generate is None:
        return OnPolicyProducer(generate)
    return AheadProducer(generate, first=first, last_step=last_step, max_staleness=max_staleness,
                         wait_for_generation=push_mode == "wait", preloaded=preloaded, abort=abort)
