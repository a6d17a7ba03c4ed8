"""``RewardPool``: grade batches of model responses with a hard per-answer timeout.

Why not ``concurrent.futures.ProcessPoolExecutor``: it cannot cancel one running task, so a single
``\\boxed{10^{10^{10}}}`` would hold a worker (and the training step) for minutes. Here every worker
is a long-lived subprocess (``dcpo_mcore.reward.worker``) that grades one answer at a time; when an
answer runs past ``timeout_s`` the parent SIGKILLs that worker, scores the answer as wrong
(``timed_out=True``) and starts a replacement in the background.

What never reaches a worker: responses without a parsable box, answers decided by the cheap stage
(normalised strings, exact numbers, integer ground truths) and answers longer than the verifier's
``max_symbolic_chars``. Those are graded in the caller's process in microseconds.

Thread-safety: one ``grade_batch`` at a time (a lock serialises concurrent callers).
"""
from __future__ import annotations

import collections
import os
import selectors
import subprocess
import threading
import time
import weakref
from dataclasses import dataclass, fields
from typing import Any, Iterable

from dcpo_mcore.reward.grading import GradeResult, SymbolicJob
from dcpo_mcore.reward.verifiers import PendingGrade, Verifier, get_verifier
from dcpo_mcore.reward.worker_handle import WorkerHandle, kill_unreaped_workers

# A worker that dies or hangs this many times in a row before becoming ready means a broken
# environment (e.g. math-verify missing): raise instead of respawning forever.
_MAX_CONSECUTIVE_STARTUP_FAILURES = 3
_CLOSE_GRACE_S = 2.0


@dataclass
class PoolStats:
    """Counters for metrics. ``symbolic``: answers sent to a worker; ``errors``: grader exceptions
    or workers that died mid-answer; ``worker_restarts``: workers replaced (timeouts, crashes)."""

    graded: int = 0
    symbolic: int = 0
    timeouts: int = 0
    errors: int = 0
    worker_restarts: int = 0

    def add(self, other: "PoolStats") -> None:
        for field in fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


class RewardPool:
    """Grade ``(response, ground_truth)`` batches with worker processes and a per-answer timeout.

    Args:
        verifier: a ``Verifier`` or a registered name (``"math"``, ``"exact_match"``).
        num_workers: grading subprocesses kept alive (each imports math-verify once).
        timeout_s: hard limit per answer, counted from when a worker receives it.
        startup_timeout_s: limit for a new worker to import and warm up.
        memory_limit_mb: address-space limit per worker (``None``/0: no limit), so that a runaway
            big-integer computation fails with MemoryError instead of exhausting the node.
        **verifier_params: passed to ``get_verifier`` when ``verifier`` is a name.
    """

    def __init__(
        self,
        verifier: Verifier | str = "math",
        *,
        num_workers: int = 2,
        timeout_s: float = 5.0,
        startup_timeout_s: float = 120.0,
        memory_limit_mb: int | None = 4096,
        **verifier_params: Any,
    ) -> None:
        if isinstance(verifier, str):
            verifier = get_verifier(verifier, **verifier_params)
        elif verifier_params:
            raise TypeError("verifier_params are only accepted together with a verifier name")
        if num_workers < 1 or timeout_s <= 0 or startup_timeout_s <= 0:
            raise ValueError("num_workers must be >= 1 and the timeouts > 0")
        self.verifier = verifier
        self.num_workers = int(num_workers)
        self.timeout_s = float(timeout_s)
        self.startup_timeout_s = float(startup_timeout_s)
        self.memory_limit_mb = memory_limit_mb
        self.stats = PoolStats()  # cumulative over the pool's life
        self.last_batch_stats = PoolStats()
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._live: dict[int, subprocess.Popen] = {}  # every worker not yet reaped
        self._dying: list[subprocess.Popen] = []  # killed, not yet reaped
        self._finalizer = weakref.finalize(self, kill_unreaped_workers, os.getpid(), self._live)
        self._startup_failures = 0
        self._closed = False
        self._workers: list[WorkerHandle] = []
        if verifier.uses_symbolic_checks:  # start (and warm up) now, in the background
            self._start_workers()

    # ----------------------------------------------------------------------------- public API
    def grade_batch(self, items: Iterable[tuple[str, Any]]) -> list[GradeResult]:
        """Grade ``(response_text, ground_truth)`` pairs; results come back in input order."""
        with self._lock:
            if self._closed:
                raise RuntimeError("RewardPool is closed")
            items = list(items)
            results: list[GradeResult | None] = [None] * len(items)
            pending: dict[int, PendingGrade] = {}
            for index, (response, ground_truth) in enumerate(items):
                outcome = self.verifier.safe_precheck(response, ground_truth)
                if isinstance(outcome, GradeResult):
                    results[index] = outcome
                else:
                    pending[index] = outcome
            batch = PoolStats(graded=len(items), symbolic=len(pending))
            batch.errors = sum(result is not None and result.error is not None for result in results)
            try:
                outcomes = self._run_jobs({index: grade.job for index, grade in pending.items()}, batch)
            except BaseException:
                # Interrupted (Ctrl-C, startup failure): answers still in flight belong to this
                # batch and must not leak into the next one, so their workers are replaced.
                self._abandon_in_flight(batch)
                raise
            for index, grade in pending.items():
                correct, timed_out, error = outcomes[index]
                results[index] = self.verifier.finish(grade, correct=correct, timed_out=timed_out, error=error)
            self.last_batch_stats = batch
            self.stats.add(batch)
            self._reap()
            return results  # type: ignore[return-value]

    def grade(self, response: str, ground_truth: Any) -> GradeResult:
        """Grade one response (a batch of one)."""
        return self.grade_batch([(response, ground_truth)])[0]

    def wait_ready(self, timeout_s: float | None = None, min_workers: int | None = None) -> None:
        """Block until ``min_workers`` (default: all) workers have imported math-verify.

        Optional: grading waits for workers anyway. Useful to keep startup out of timings.
        """
        with self._lock:
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            needed = len(self._workers) if min_workers is None else min(min_workers, len(self._workers))
            while sum(worker.ready for worker in self._workers) < needed:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"reward workers not ready after {timeout_s} s")
                self._poll(self._seconds_to_next_deadline(deadline), {}, self.stats)
                self._enforce_deadlines({}, self.stats)

    @property
    def worker_pids(self) -> list[int]:
        return [worker.popen.pid for worker in self._workers]

    def close(self) -> None:
        """Ask workers to exit (EOF on stdin), SIGKILL any that linger, release every pipe."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for worker in self._workers:
                try:
                    worker.popen.stdin.close()
                except OSError:
                    pass
            deadline = time.monotonic() + _CLOSE_GRACE_S
            for worker in self._workers:
                try:
                    worker.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
                self._retire(worker)
            self._workers = []
            self._reap(wait_s=_CLOSE_GRACE_S)  # everything is SIGKILLed by now: exits are imminent
            self._selector.close()
            self._finalizer.detach()

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------ worker lifecycle
    def _start_workers(self) -> None:
        while len(self._workers) < self.num_workers:
            self._workers.append(self._spawn())

    def _spawn(self) -> WorkerHandle:
        worker = WorkerHandle.start(self.memory_limit_mb, startup_deadline=time.monotonic() + self.startup_timeout_s)
        self._selector.register(worker.fd, selectors.EVENT_READ, worker)
        self._live[worker.popen.pid] = worker.popen
        return worker

    def _retire(self, worker: WorkerHandle) -> None:
        """Kill a worker; it stays in ``_live`` (for the finalizer) until ``_reap`` sees it exit."""
        try:
            self._selector.unregister(worker.fd)
        except (KeyError, ValueError):
            pass
        worker.kill()
        self._dying.append(worker.popen)
        self._reap()

    def _reap(self, wait_s: float = 0.0) -> None:
        """Collect killed workers that have exited (no zombies); wait up to ``wait_s`` for the rest."""
        deadline = time.monotonic() + wait_s
        still_dying = []
        for popen in self._dying:
            try:
                popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                still_dying.append(popen)
                continue
            self._live.pop(popen.pid, None)
        self._dying = still_dying

    def _replace(self, worker: WorkerHandle, stats: PoolStats) -> None:
        self._retire(worker)
        self._workers[self._workers.index(worker)] = self._spawn()
        stats.worker_restarts += 1

    def _abandon_in_flight(self, stats: PoolStats) -> None:
        for worker in list(self._workers):
            if worker.job_index is not None:
                self._replace(worker, stats)

    def _startup_failed(self, worker: WorkerHandle, stats: PoolStats) -> None:
        self._startup_failures += 1
        if self._startup_failures >= _MAX_CONSECUTIVE_STARTUP_FAILURES:
            raise RuntimeError(
                f"reward grading workers failed to start {self._startup_failures} times in a row "
                "(see their stderr above; is math-verify installed?)"
            )
        self._replace(worker, stats)

    # ----------------------------------------------------------------------------- scheduling
    def _run_jobs(self, jobs: dict[int, SymbolicJob], stats: PoolStats) -> dict[int, tuple[bool, bool, str | None]]:
        """Run symbolic jobs on the workers; ``{index: (correct, timed_out, error)}`` for each."""
        if jobs:
            self._start_workers()  # no-op unless the verifier had not started them
        queue = collections.deque(jobs.items())
        outcomes: dict[int, tuple[bool, bool, str | None]] = {}
        while len(outcomes) < len(jobs):
            self._dispatch(queue, stats)
            self._poll(self._seconds_to_next_deadline(None), outcomes, stats)
            self._enforce_deadlines(outcomes, stats)
        return outcomes

    def _dispatch(self, queue: collections.deque, stats: PoolStats) -> None:
        for worker in list(self._workers):
            if not queue:
                return
            if not worker.idle:
                continue
            index, job = queue.popleft()
            try:
                worker.send({"id": index, "kind": job.kind, "pred": job.pred, "ground_truths": list(job.ground_truths)})
            except OSError:  # the worker died while idle: not this answer's fault, retry it elsewhere
                queue.appendleft((index, job))
                self._replace(worker, stats)
                continue
            worker.job_index = index
            worker.job_deadline = time.monotonic() + self.timeout_s

    def _seconds_to_next_deadline(self, outer_deadline: float | None) -> float:
        deadlines = [w.job_deadline for w in self._workers if w.job_index is not None]
        deadlines += [w.startup_deadline for w in self._workers if not w.ready]
        if outer_deadline is not None:
            deadlines.append(outer_deadline)
        if not deadlines:
            return 0.05  # only reachable if every worker is idle yet jobs remain: re-dispatch soon
        return max(0.0, min(deadlines) - time.monotonic())

    def _poll(self, timeout: float, outcomes: dict, stats: PoolStats) -> None:
        for key, _ in self._selector.select(timeout):
            worker: WorkerHandle = key.data
            if worker not in self._workers:
                continue  # replaced earlier in this loop
            messages = worker.read_messages()
            if messages is None:
                self._on_worker_exit(worker, outcomes, stats)
                continue
            for message in messages:
                self._on_message(worker, message, outcomes, stats)

    def _on_message(self, worker: WorkerHandle, message: dict, outcomes: dict, stats: PoolStats) -> None:
        if message.get("ready"):
            worker.ready = True
            self._startup_failures = 0
        elif worker.job_index is not None and message.get("id") == worker.job_index:
            error = message.get("error")
            outcomes[worker.job_index] = (bool(message.get("correct")) and not error, False, error)
            stats.errors += bool(error)
            worker.job_index = None

    def _on_worker_exit(self, worker: WorkerHandle, outcomes: dict, stats: PoolStats) -> None:
        if worker.job_index is not None:  # died on this answer (e.g. killed by the OOM killer)
            code = worker.exit_code(wait_s=0.5)
            outcomes[worker.job_index] = (False, False, f"grading worker died (exit code {code})")
            stats.errors += 1
            worker.job_index = None
            self._replace(worker, stats)
        elif not worker.ready:
            self._startup_failed(worker, stats)
        else:
            self._replace(worker, stats)

    def _enforce_deadlines(self, outcomes: dict, stats: PoolStats) -> None:
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.job_index is not None and now >= worker.job_deadline:
                outcomes[worker.job_index] = (False, True, f"timed out after {self.timeout_s:g} s")
                stats.timeouts += 1
                worker.job_index = None
                self._replace(worker, stats)
            elif not worker.ready and now >= worker.startup_deadline:
                self._startup_failed(worker, stats)
