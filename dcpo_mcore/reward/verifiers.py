"""Verifiers turn (response, ground truth) into a ``GradeResult``; a registry names them.

A verifier works in two steps so that ``RewardPool`` can keep everything that might hang out of
the trainer process:

* ``precheck`` (always in the caller's process, cheap, cannot hang) either returns the final
  ``GradeResult`` or a ``PendingGrade`` holding a ``SymbolicJob``;
* ``finish`` turns the job's outcome (``correct``, or a timeout / error) into the result.

``grade`` does both in-process with no timeout: convenient for unit tests and trusted input.
"""
from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from dcpo_mcore.algo.registry import Registry
from dcpo_mcore.reward.equivalence import MAX_SYMBOLIC_CHARS, ground_truth_candidates, plan_equivalence
from dcpo_mcore.reward.extraction import extract_last_boxed
from dcpo_mcore.reward.grading import GradeResult, RewardScheme, SymbolicJob, make_result
from dcpo_mcore.reward.symbolic_checks import run_symbolic_job
from dcpo_mcore.errors import UserValueError


@dataclass(frozen=True)
class PendingGrade:
    """A response whose answer was extracted but needs a symbolic check to be graded."""

    pred: str
    job: SymbolicJob


class Verifier(abc.ABC):
    """Base class: subclasses implement ``precheck`` (and name the pool check they need)."""

    name: ClassVar[str]
    # Whether ``precheck`` can return a ``PendingGrade``; a pool starts no workers for verifiers
    # that never need one.
    uses_symbolic_checks: ClassVar[bool] = True

    def __init__(self, scheme: RewardScheme | str = RewardScheme.TERNARY) -> None:
        self.scheme = RewardScheme.parse(scheme)

    @abc.abstractmethod
    def precheck(self, response: str, ground_truth: Any) -> GradeResult | PendingGrade:
        """Grade cheaply, or return the symbolic work still needed."""

    def safe_precheck(self, response: str, ground_truth: Any) -> GradeResult | PendingGrade:
        """``precheck`` that scores a response as unparsable (with ``error`` set) instead of raising:
        one freak string must not abort a training step. Bugs still show up in the error counts."""
        try:
            return self.precheck(response, ground_truth)
        except Exception as exc:  # noqa: BLE001
            return make_result(self.scheme, correct=False, pred=None, error=f"precheck failed: {exc!r}"[:200])

    def finish(
        self, pending: PendingGrade, *, correct: bool, timed_out: bool = False, error: str | None = None
    ) -> GradeResult:
        """Result for a pending grade once its symbolic check ended (or timed out / failed)."""
        return make_result(self.scheme, correct=correct, pred=pending.pred, timed_out=timed_out, error=error)

    def grade(self, response: str, ground_truth: Any) -> GradeResult:
        """Grade in this process, without a timeout (use ``RewardPool`` for model output at scale)."""
        outcome = self.safe_precheck(response, ground_truth)
        if isinstance(outcome, GradeResult):
            return outcome
        try:
            correct = run_symbolic_job(outcome.job)
        except Exception as exc:  # noqa: BLE001 - any grader failure scores as wrong
            return self.finish(outcome, correct=False, error=f"{type(exc).__name__}: {exc}"[:200])
        return self.finish(outcome, correct=correct)

    def grade_batch(self, items: Iterable[tuple[str, Any]]) -> list[GradeResult]:
        """``grade`` over ``(response, ground_truth)`` pairs, in order, in this process."""
        return [self.grade(response, ground_truth) for response, ground_truth in items]


class MathVerifier(Verifier):
    """Last ``\\boxed{}`` answer vs. ground truth: normalised strings, exact numbers, math-verify.

    ``max_symbolic_chars``: an extracted answer (or ground truth) longer than this is compared as a
    plain stripped string and never reaches sympy (first line of defence against huge inputs).
    """

    name = "math"

    def __init__(
        self, scheme: RewardScheme | str = RewardScheme.TERNARY, max_symbolic_chars: int = MAX_SYMBOLIC_CHARS
    ) -> None:
        super().__init__(scheme)
        self.max_symbolic_chars = int(max_symbolic_chars)

    def precheck(self, response: str, ground_truth: Any) -> GradeResult | PendingGrade:
        boxed = extract_last_boxed(response)
        if boxed is None:  # no parsable answer: decided without any comparison
            return make_result(self.scheme, correct=False, pred=None)
        pred = boxed.strip()
        plan = plan_equivalence(pred, ground_truth, self.max_symbolic_chars)
        if isinstance(plan, bool):
            return make_result(self.scheme, correct=plan, pred=pred)
        return PendingGrade(pred=pred, job=SymbolicJob(kind="math", pred=pred, ground_truths=tuple(plan)))


class ExactMatchVerifier(Verifier):
    """Exact string match after stripping surrounding whitespace (synthetic tasks).

    The answer is the last ``\\boxed{}`` if the response has one. Otherwise, with
    ``require_box=False`` (default) the whole stripped response is the answer; with
    ``require_box=True`` the response has no parsable answer (-1 under ``ternary``).
    """

    name = "exact_match"
    uses_symbolic_checks = False

    def __init__(self, scheme: RewardScheme | str = RewardScheme.TERNARY, require_box: bool = False) -> None:
        super().__init__(scheme)
        self.require_box = bool(require_box)

    def precheck(self, response: str, ground_truth: Any) -> GradeResult:
        boxed = extract_last_boxed(response)
        if boxed is not None:
            pred: str | None = boxed.strip()
        elif self.require_box:
            pred = None
        else:
            pred = (response or "").strip() or None
        if pred is None:
            return make_result(self.scheme, correct=False, pred=None)
        correct = any(pred == candidate.strip() for candidate in ground_truth_candidates(ground_truth))
        return make_result(self.scheme, correct=correct, pred=pred)


_VERIFIERS: Registry[Callable[..., Verifier]] = Registry("verifier", error=UserValueError)


def register_verifier(name: str, factory: Callable[..., Verifier]) -> Callable[..., Verifier]:
    """Register ``factory`` (usually a ``Verifier`` subclass) under ``name``; duplicates raise."""
    return _VERIFIERS.register(name, factory)


def available_verifiers() -> list[str]:
    """Names accepted by ``get_verifier``, sorted."""
    return _VERIFIERS.names()


def get_verifier(name: str, **params: Any) -> Verifier:
    """Build the verifier registered as ``name`` with keyword ``params`` (e.g. ``scheme="binary"``)."""
    return _VERIFIERS.get(name)(**params)


register_verifier(MathVerifier.name, MathVerifier)
register_verifier(ExactMatchVerifier.name, ExactMatchVerifier)
