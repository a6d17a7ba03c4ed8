"""Graded cases with hand-known answers, under both reward schemes (in-process path).

Decisions pinned here (see dcpo_mcore/reward/equivalence.py):
* integer ground truth: only an integer/decimal literal of exactly that value counts
  (``10.0`` yes; ``10.5``, ``\\frac{20}{2}``, ``2^{10}`` no);
* other numbers compare by exact value, so the unreduced ``2/4`` counts for ``\\frac{1}{2}``;
* the answer is the last literal ``\\boxed{..}``; ``\\fbox``, unbalanced or spaced boxes are
  unparsable (-1 under ternary, like no box at all).
"""
import threading

import pytest

from dcpo_mcore.reward import (
    ExactMatchVerifier,
    MathVerifier,
    RewardScheme,
    answers_equivalent,
    normalize_answer,
)

# (response, ground truth, expected correct, expected has_box)
GRADED_CASES = [
    # integers
    ("The answer is \\boxed{42}.", "42", True, True),
    ("\\boxed{100}", "10", False, True),
    ("\\boxed{10}", "100", False, True),
    ("\\boxed{10.0}", "10", True, True),
    ("\\boxed{10.5}", "10", False, True),
    ("\\boxed{10.0000001}", "10", False, True),
    ("\\boxed{-50}", "-50", True, True),
    ("\\boxed{50}", "-50", False, True),
    ("\\boxed{+7}", "7", True, True),
    ("\\boxed{\\frac{20}{2}}", "10", False, True),  # integer rule: no unsimplified expressions
    ("\\boxed{2^{10}}", "1024", False, True),
    ("\\boxed{10080}", "10,\\!080", True, True),
    ("\\boxed{10,080}", "10,\\!080", True, True),
    ("\\boxed{x = 5}", "5", True, True),
    # fractions and decimals
    ("\\boxed{0.5}", "\\frac{1}{2}", True, True),
    ("\\boxed{1/2}", "\\frac{1}{2}", True, True),
    ("\\boxed{\\dfrac{1}{2}}", "\\frac12", True, True),
    ("\\boxed{\\tfrac12}", "0.5", True, True),
    ("\\boxed{2/4}", "\\frac{1}{2}", True, True),  # unreduced fraction accepted by value
    ("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}", False, True),
    ("\\boxed{0.33}", "\\frac{1}{3}", False, True),
    ("\\boxed{-\\frac{35}{9}}", "-\\frac{35}{9}", True, True),
    ("\\boxed{\\frac{35}{9}}", "-\\frac{35}{9}", False, True),
    ("\\boxed{\\frac{9}{5}}", "1\\frac{4}{5}", True, True),  # mixed number
    # radicals, tuples, intervals, sets, expressions
    ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt2}{2}", True, True),
    ("\\boxed{\\sqrt{3}/2}", "\\frac{\\sqrt2}{2}", False, True),
    ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", True, True),
    ("\\boxed{(3,\\pi/2)}", "\\left( 3, \\frac{\\pi}{2} \\right)", True, True),
    ("\\boxed{(3, \\pi)}", "\\left( 3, \\frac{\\pi}{2} \\right)", False, True),
    ("\\boxed{(3,4]}", "(3,4]", True, True),
    ("\\boxed{[3,4]}", "(3,4]", False, True),
    ("\\boxed{7, 5, 3}", "3, 5, 7", True, True),
    ("\\boxed{p-q}", "p - q", True, True),
    ("\\boxed{q-p}", "p - q", False, True),
    ("\\boxed{6-5i}", "6 - 5i", True, True),
    ("\\boxed{6+5i}", "6 - 5i", False, True),
    # degrees, units, text, percent
    ("\\boxed{90^\\circ}", "90^\\circ", True, True),
    ("\\boxed{90}", "90^\\circ", True, True),
    ("\\boxed{5.4}", "5.4 \\text{ cents}", True, True),
    ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}", True, True),
    ("\\boxed{Navin}", "\\text{Evelyn}", False, True),
    ("\\boxed{40\\%}", "40", True, True),
    # box structure
    ("\\boxed{\\boxed{7}}", "7", True, True),
    ("I first thought \\boxed{3}, but it is \\boxed{5}", "5", True, True),
    ("I first thought \\boxed{5}, but it is \\boxed{3}", "5", False, True),
    ("\\boxed{}", "5", False, True),
    ("\\fbox{5}", "5", False, False),
    ("\\boxed{5", "5", False, False),
    ("\\boxed {5}", "5", False, False),
    ("The answer is 5.", "5", False, False),
    # ground-truth lists: correct if any matches
    ("\\boxed{4}", ["3", "4"], True, True),
    ("\\boxed{5}", ["3", "4"], False, True),
]


def _ids(cases):
    return [f"{i}-{case[0][-30:]}" for i, case in enumerate(cases)]


@pytest.fixture(scope="module")
def ternary():
    return MathVerifier(scheme="ternary")


@pytest.fixture(scope="module")
def binary():
    return MathVerifier(scheme=RewardScheme.BINARY)


@pytest.mark.parametrize("response, truth, correct, has_box", GRADED_CASES, ids=_ids(GRADED_CASES))
def test_ternary_reward(ternary, response, truth, correct, has_box):
    result = ternary.grade(response, truth)
    assert (result.correct, result.has_box) == (correct, has_box)
    expected = 1.0 if correct else (0.0 if has_box else -1.0)
    assert result.reward == expected
    assert not result.timed_out


@pytest.mark.parametrize("response, truth, correct, has_box", GRADED_CASES, ids=_ids(GRADED_CASES))
def test_binary_reward(binary, response, truth, correct, has_box):
    result = binary.grade(response, truth)
    assert result.correct == correct
    assert result.reward == (1.0 if correct else -1.0)


def test_case_table_can_fail():
    """The table must contain both verdicts and all three ternary rewards, so that a grader that
    always says "correct" (or "wrong") fails it."""
    verdicts = {correct for _, _, correct, _ in GRADED_CASES}
    rewards = {(1 if c else (0 if b else -1)) for _, _, c, b in GRADED_CASES}
    assert verdicts == {True, False}
    assert rewards == {1, 0, -1}
    assert len(GRADED_CASES) >= 30


def test_every_correct_case_is_wrong_against_another_truth(ternary):
    """Mutation check: each accepted answer is rejected for a different ground truth."""
    for response, _, correct, _ in GRADED_CASES:
        if correct:
            result = ternary.grade(response, "\\frac{7}{13}")
            assert not result.correct, response
            assert result.reward == 0.0


def test_pred_is_stripped_box_content(ternary):
    result = ternary.grade("so \\boxed{ \\frac{1}{2} }", "0.5")
    assert result.pred == "\\frac{1}{2}"
    assert ternary.grade("no box", "0.5").pred is None


def test_answers_equivalent_direct():
    assert answers_equivalent("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2")
    assert answers_equivalent("7", ["6", "7"])
    assert not answers_equivalent("10", "100")
    assert not answers_equivalent("10.5", "10")
    assert not answers_equivalent("x", "y")
    assert not answers_equivalent("5", [])


def test_long_answer_is_compared_as_string_only():
    long_answer = "1+" * 2000 + "1"
    assert answers_equivalent(long_answer, long_answer)
    assert not answers_equivalent(long_answer, "4001")  # would be true symbolically; too long to try


def test_symbolic_check_works_outside_main_thread():
    """math-verify raises in non-main threads unless its own timeouts are disabled."""
    results = []
    thread = threading.Thread(target=lambda: results.append(answers_equivalent("(3,\\pi/2)", "(3, \\frac{\\pi}{2})")))
    thread.start()
    thread.join(timeout=60)
    assert results == [True]


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("\\left( 3, \\dfrac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("\\$32,\\!348", "32348"),
        ("864 \\mbox{ inches}^2", "864"),
        ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}"),
        ("\\frac 59", "\\frac{5}{9}"),
        ("11\\sqrt2", "11\\sqrt{2}"),
        (".0000672", "0.0000672"),
        ("+10.", "10"),
        ("1/2", "\\frac{1}{2}"),
        ("2/4", "\\frac{2}{4}"),  # never simplified by the normaliser
        ("y = 2x + 3", "2x+3"),
        ("3, 5, 7", "3,5,7"),  # not a thousands separator
        ("\\rightarrow", "\\rightarrow"),
    ],
)
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


class TestExactMatchVerifier:
    def test_box_preferred_then_text(self):
        verifier = ExactMatchVerifier(scheme="ternary")
        assert verifier.grade("work... \\boxed{95}", "95").reward == 1.0
        assert verifier.grade("  95 \n", "95").reward == 1.0  # no box: stripped text
        assert verifier.grade("\\boxed{96}", "95").reward == 0.0
        assert verifier.grade("   ", "95").reward == -1.0  # nothing to compare

    def test_exact_means_exact(self):
        verifier = ExactMatchVerifier(scheme="binary")
        assert not verifier.grade("\\boxed{95.0}", "95").correct
        assert not verifier.grade("\\boxed{\\frac{1}{2}}", "0.5").correct
        assert verifier.grade("\\boxed{ 95 }", [" 94", "95 "]).correct

    def test_require_box(self):
        verifier = ExactMatchVerifier(scheme="ternary", require_box=True)
        result = verifier.grade("95", "95")
        assert (result.correct, result.has_box, result.reward) == (False, False, -1.0)
        assert verifier.grade("\\boxed{95}", "95").reward == 1.0


def test_unknown_scheme_lists_valid_ones():
    with pytest.raises(ValueError, match="ternary, binary"):
        MathVerifier(scheme="quaternary")
