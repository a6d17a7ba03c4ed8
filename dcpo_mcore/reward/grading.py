"""Reward schemes and the per-response grading result.

* ``ternary`` (DCPO, paper Eq. 15; docs/algorithm.md [reward-schemes]): +1 correct; 0 a parsable answer (final
  ``\\boxed{}``) that is wrong; -1 no parsable answer ("format error").
* ``binary`` (the GRPO/DAPO/GSPO baseline scripts): +1 correct, -1 otherwise.

A grading timeout or a grader exception counts as *wrong*. Under ``ternary`` that is 0 when an
answer was extracted (the reference grader keeps the extracted ``pred`` on timeout, so the DCPO
mapping yields 0) and -1 when none was. Use one scheme for all methods in a comparison
(docs/algorithm.md [choice-same-reward]); which one is a trainer config choice, recorded with the results.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from dcpo_mcore.errors import UserValueError


class RewardScheme(str, enum.Enum):
    TERNARY = "ternary"
    BINARY = "binary"

    @classmethod
    def parse(cls, value: "RewardScheme | str") -> "RewardScheme":
        """Accept an enum member or its string value; reject anything else with the valid names."""
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(member.value for member in cls)
            raise UserValueError(f"unknown reward scheme {value!r}; valid: {valid}") from None


def reward_value(scheme: RewardScheme, correct: bool, has_box: bool) -> float:
    """The scalar reward for one response under ``scheme``."""
    if correct:
        return 1.0
    if scheme is RewardScheme.TERNARY and has_box:
        return 0.0
    return -1.0


@dataclass(frozen=True)
class GradeResult:
    """Outcome of grading one response.

    ``has_box``: a parsable final answer was extracted (for ``MathVerifier`` a literal last
    ``\\boxed{..}``; for ``ExactMatchVerifier`` in fallback mode, the non-empty stripped text).
    ``pred``: the extracted answer, ``None`` if there was none. ``timed_out``: the symbolic check
    ran past the pool's per-answer timeout. ``error``: a short description if the grader raised or
    its worker died (the response is then graded wrong).
    """

    reward: float
    correct: bool
    has_box: bool
    pred: str | None
    timed_out: bool = False
    error: str | None = None


def make_result(
    scheme: RewardScheme,
    *,
    correct: bool,
    pred: str | None,
    timed_out: bool = False,
    error: str | None = None,
) -> GradeResult:
    """Build a ``GradeResult``; ``has_box`` follows from whether an answer was extracted."""
    has_box = pred is not None
    return GradeResult(
        reward=reward_value(scheme, correct, has_box),
        correct=correct,
        has_box=has_box,
        pred=pred,
        timed_out=timed_out,
        error=error,
    )


@dataclass(frozen=True)
class SymbolicJob:
    """Work a verifier could not finish cheaply: is ``pred`` equivalent to any ``ground_truths``?

    ``kind`` names the check to run (see ``dcpo_mcore.reward.symbolic_checks.SYMBOLIC_CHECKS``).
    Kept small and JSON-friendly because it crosses a process boundary.
    """

    kind: str
    pred: str
    ground_truths: tuple[str, ...]
