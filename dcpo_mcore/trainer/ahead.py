"""Rollouts generated ahead of training, with bounded staleness: the schedule and rank 0's generation thread.

Used by :class:`~dcpo_mcore.trainer.producers.AheadProducer` when ``rollout.max_staleness`` >= 1
(docs/algorithm.md [async-rollout]).

Versions are step numbers: version ``s`` is the policy after training step ``s`` (the run's first
version is its start step). On-policy, step ``t`` trains on samples of version ``t - 1``. With a
staleness bound ``K``, the batch of step ``t`` is generated with version

    v(t) = max(t - 1 - K, first)

so generation of steps ``t + 1 .. t + K`` overlaps the training of step ``t``, and every sample trains
at most ``K`` versions after the one that produced it. The version of each batch is a function of its
step alone: before version ``s`` is pushed, every batch that needs an older version is finished first
(:meth:`AheadBuffer.wait_before_push`), so no request ever sees two versions, and a run is as
reproducible as the on-policy loop (the sampling seeds are per step).
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator


def generation_version(step: int, first: int, max_staleness: int) -> int:
    """The weight version the batch of training step ``step`` is generated with."""
    if max_staleness < 0:
        raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
    return max(step - 1 - max_staleness, first)


def last_step_needing(version: int, max_staleness: int) -> int:
    """The last step whose batch is generated with a version older than ``version`` (v(t) < version)."""
    return version + max_staleness


class AheadBuffer:
    """Rank 0's generation thread: step after step, each batch as soon as its version is pushed.

    ``generate(step)`` makes one step's batch (it talks to SGLang and the graders). ``preloaded`` holds
    batches restored from a checkpoint; generation continues after the last of them.
    """

    def __init__(self, generate: Callable[[int], Any], *, first: int, last_step: int, max_staleness: int,
                 preloaded: dict[int, Any] | None = None):
        self._generate, self.first, self.last_step, self.k = generate, first, last_step, max_staleness
        self._ready: dict[int, Any] = dict(preloaded or {})
        self._next = max([first, *self._ready]) + 1
        self._pushed = first
        self._error: BaseException | None = None
        self._closed = False
        self._busy = False  # a batch is being generated
        self._holds = 0  # quiet() sections in progress: no batch may start
        self._cond = threading.Condition()
        self.generation_seconds: dict[int, float] = {}
        self.rollout_idle_seconds = 0.0  # the thread waiting for a weight version
        self._thread = threading.Thread(target=self._run, name="rollout-ahead", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ trainer side
    def take(self, step: int) -> tuple[Any, float]:
        """Step ``step``'s batch (blocking) and the seconds the trainer waited for it."""
        t0 = time.perf_counter()
        with self._cond:
            self._cond.wait_for(lambda: step in self._ready or self._error is not None or self._closed)
            if step not in self._ready:  # a finished batch is still handed out after a later one failed
                self._raise_if_failed()
            batch = self._ready.pop(step)
        return batch, time.perf_counter() - t0

    def wait_before_push(self, version: int) -> float:
        """Block until every batch generated with a version older than ``version`` is finished; seconds waited."""
        through = min(last_step_needing(version, self.k), self.last_step)
        t0 = time.perf_counter()
        with self._cond:
            self._cond.wait_for(lambda: self._next > through or self._error is not None or self._closed)
            self._raise_if_failed()
        return time.perf_counter() - t0

    def pushed(self, version: int) -> None:
        """Version ``version`` is on the servers: batches that need it may start."""
        with self._cond:
            self._pushed = max(self._pushed, version)
            self._cond.notify_all()

    @contextmanager
    def quiet(self) -> Iterator[None]:
        """No generation inside: waits for the batch in progress, and none starts until the block ends
        (a re-push of the current weights, or a regeneration in the trainer's thread)."""
        with self._cond:
            self._holds += 1
            self._cond.wait_for(lambda: not self._busy or self._closed)
        try:
            yield
        finally:
            with self._cond:
                self._holds -= 1
                self._cond.notify_all()

    def buffered(self) -> dict[int, Any]:
        """Finished batches not taken yet (what a checkpoint must keep: their versions are gone after a resume)."""
        with self._cond:
            return dict(self._ready)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5.0)

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        while True:
            with self._cond:
                step = self._next
                if step > self.last_step or self._closed:
                    return
                need = generation_version(step, self.first, self.k)
                t0 = time.perf_counter()
                self._cond.wait_for(lambda: (self._pushed >= need and not self._holds) or self._closed)
                self.rollout_idle_seconds += time.perf_counter() - t0
                if self._closed:
                    return
                self._busy = True
            t1 = time.perf_counter()
            try:
                batch = self._generate(step)
            except BaseException as exc:  # noqa: BLE001 - handed to the trainer, which raises it
                with self._cond:
                    self._error, self._busy = exc, False
                    self._cond.notify_all()
                return
            with self._cond:
                self._busy = False
                self.generation_seconds[step] = time.perf_counter() - t1
                self._ready[step] = batch
                self._next = step + 1
                self._cond.notify_all()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError("rollout generation ahead of training failed") from self._error
        if self._closed:
            raise RuntimeError("the rollout buffer was closed")
