"""Is a predicted answer equivalent to the ground truth?

Two stages, so that the expensive and potentially hanging one runs only where needed:

1. ``decide_cheaply`` (trainer process, microseconds, cannot hang): MATH-style normalised string
   equality, exact comparison of plain numbers, and the integer rule below. Returns ``True``/
   ``False`` when it can decide, ``None`` when only a symbolic check can.
2. ``symbolic_equivalent`` (math-verify + sympy): meant to run in a ``RewardPool`` worker process
   that is killed on timeout, because adversarial answers (``10^{10^{10}}``, ``(10^{100})!``) make
   sympy run for minutes or exhaust memory.

Grading rules (decisions documented for the trainer):

* **Integer ground truth** (AIME/AMC style, e.g. ``"10"``, ``"10,\\!080"``): the prediction must be
  an integer or decimal literal with exactly that value: ``10``, ``10.0``, ``10,000``-style commas
  are fine; ``10.5``, ``10.0000001``, ``\\frac{20}{2}``, ``2^{10}``, ``5+5`` are wrong. This keeps
  unsimplified expressions from collecting reward and never sends integer problems to sympy.
* **Other plain numbers** are compared exactly by value: ``0.5`` == ``\\frac{1}{2}`` == ``1/2``, and
  the unreduced ``2/4`` is accepted for ``\\frac{1}{2}`` (as the reference grader's math-verify
  branch does); ``0.33`` != ``\\frac{1}{3}``.
* **Everything else** (tuples, intervals, sets, radicals, expressions, matrices) goes to
  math-verify, which compares by value with set/interval semantics.
* Answers longer than ``max_symbolic_chars`` are only compared as stripped strings: a real final
  answer is short, and sympy on kilobytes of LaTeX is a denial-of-service vector.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from dcpo_mcore.reward.normalization import (
    is_integer_literal,
    normalize_answer,
    parse_decimal_literal,
    parse_numeric_literal,
)

# Longest answer (characters) that is normalised or handed to sympy/math-verify.
MAX_SYMBOLIC_CHARS = 1024


def ground_truth_candidates(ground_truth: Any) -> list[str]:
    """A ground truth may be one string or a list of acceptable strings; always return a list."""
    if ground_truth is None:
        return []
    if isinstance(ground_truth, str):
        return [ground_truth]
    if isinstance(ground_truth, (int, float)):
        return [str(ground_truth)]
    return [str(candidate) for candidate in ground_truth if candidate is not None]


def decide_cheaply(pred: str, ground_truth: str, max_symbolic_chars: int = MAX_SYMBOLIC_CHARS) -> bool | None:
    """Decide equivalence without sympy where possible; ``None`` means "needs a symbolic check"."""
    if len(pred) > max_symbolic_chars or len(ground_truth) > max_symbolic_chars:
        return pred.strip() == ground_truth.strip()
    pred_norm = normalize_answer(pred)
    truth_norm = normalize_answer(ground_truth)
    if pred_norm == truth_norm:
        return True
    if not pred_norm or not truth_norm:
        return False
    if is_integer_literal(truth_norm):
        truth_value = parse_decimal_literal(truth_norm)
        return truth_value is not None and parse_decimal_literal(pred_norm) == truth_value
    pred_value = parse_numeric_literal(pred_norm)
    truth_value = parse_numeric_literal(truth_norm)
    if pred_value is not None and truth_value is not None:
        return pred_value == truth_value
    return None


def plan_equivalence(
    pred: str, ground_truth: Any, max_symbolic_chars: int = MAX_SYMBOLIC_CHARS
) -> bool | list[str]:
    """Cheap stage over all ground-truth candidates.

    Returns ``True``/``False`` when decided, else the candidates that still need
    ``symbolic_equivalent`` (the prediction is correct iff any of them matches).
    """
    undecided: list[str] = []
    for candidate in ground_truth_candidates(ground_truth):
        verdict = decide_cheaply(pred, candidate, max_symbolic_chars)
        if verdict is True:
            return True
        if verdict is None:
            undecided.append(candidate)
    return undecided if undecided else False


def _quiet_math_verify_logs() -> None:
    # With our own timeouts, math-verify warns "Timeout is disabled" on every call; and it logs
    # every unparsable model answer. Neither is actionable in a training log.
    for name in ("math_verify", "math_verify.parser", "math_verify.grader", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _math_verify_parse(answer: str) -> list:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    # Wrapping in \boxed{} tells math-verify exactly where the answer is; a bare string such as
    # "3, 5, 7" would otherwise be searched for "the last number".
    parsed = parse("\\boxed{" + answer + "}", extraction_config=config, parsing_timeout=None)
    if not parsed:  # e.g. unbalanced braces inside the answer defeat the \boxed wrapper
        parsed = parse("$" + answer + "$", extraction_config=config, parsing_timeout=None)
    return parsed


def symbolic_equivalent(pred: str, ground_truths: Sequence[str]) -> bool:
    """math-verify equivalence of ``pred`` with any of ``ground_truths``. NO timeout of its own.

    Run it where it can be killed (``RewardPool``) unless the inputs are trusted. Exceptions from
    math-verify/sympy propagate so that callers can count them as grader errors.
    """
    from math_verify import verify

    _quiet_math_verify_logs()
    target = _math_verify_parse(pred)
    if not target:
        return False
    for ground_truth in ground_truths:
        gold = _math_verify_parse(ground_truth)
        if gold and verify(gold, target, timeout_seconds=None):
            return True
    return False


def answers_equivalent(pred: str, ground_truth: Any, max_symbolic_chars: int = MAX_SYMBOLIC_CHARS) -> bool:
    """Full equivalence check in the calling process (cheap stage, then math-verify).

    No timeout: fine for trusted inputs and unit tests; the trainer grades model output through
    ``RewardPool``. A math-verify exception counts as "not equivalent".
    """
    plan = plan_equivalence(pred, ground_truth, max_symbolic_chars)
    if isinstance(plan, bool):
        return plan
    try:
        return symbolic_equivalent(pred, plan)
    except Exception:  # noqa: BLE001 - sympy raises anything from RecursionError to TypeError
        return False
