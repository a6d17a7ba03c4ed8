"""Extraction of the last literal ``\\boxed{...}`` (docs/algorithm.md [reward-extraction])."""
import time

import pytest

from dcpo_mcore.reward import extract_last_boxed


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("first \\boxed{3}, finally \\boxed{5}", "5"),  # the last box wins
        ("\\boxed{\\boxed{7}}", "7"),  # nested: the innermost (= last) command
        ("\\boxed{a{b}c}", "a{b}c"),
        ("\\boxed{\\{1\\pm\\sqrt{5},-2\\}}", "\\{1\\pm\\sqrt{5},-2\\}"),  # escaped braces pair up
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("$\\boxed{ 12 }$", " 12 "),  # content is returned raw; verifiers strip it
        ("\\boxed{}", ""),
        ("\\boxed{4} and \\boxedfoo{9}", "4"),  # \boxedfoo is another command, not a box
    ],
)
def test_extracts_last_box(text, expected):
    assert extract_last_boxed(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "no box at all, the answer is 5",
        "\\fbox{5}",  # must be literally \boxed
        "\\boxed{5",  # unbalanced (truncated response)
        "\\boxed{3} and then \\boxed{4",  # last box unbalanced: no fallback to the earlier one
        "\\boxed {5}",  # whitespace before the brace is not the literal form
        "\\boxed5",
        "\\boxed{2} ... and the final \\boxed",  # last \boxed has no argument
        "\\boxed}",
    ],
)
def test_unparsable_boxes_give_none(text):
    assert extract_last_boxed(text) is None


def test_balanced_100k_nested_braces_no_recursion_error():
    depth = 100_000
    text = "\\boxed{" + "{" * depth + "x" + "}" * depth + "}"
    start = time.perf_counter()
    result = extract_last_boxed(text)
    assert time.perf_counter() - start < 2.0
    assert result == "{" * depth + "x" + "}" * depth


def test_unbalanced_100k_open_braces_is_none_and_fast():
    text = "\\boxed{" + "{" * 100_000
    start = time.perf_counter()
    assert extract_last_boxed(text) is None
    assert time.perf_counter() - start < 2.0


def test_100kb_response_is_fast():
    filler = "Let me think about this step by step. " * 2700  # ~100 KB
    assert len(filler) > 100_000
    start = time.perf_counter()
    assert extract_last_boxed(filler + "\\boxed{17}") == "17"
    assert extract_last_boxed(filler) is None
    assert extract_last_boxed("\\boxed{" + filler) is None
    many_boxes = "\\boxed{1} " * 10_000 + "\\boxed{2}"
    assert extract_last_boxed(many_boxes) == "2"
    many_fake = "\\boxedx" * 20_000  # each rfind step must shrink the search range
    assert extract_last_boxed(many_fake) is None
    assert time.perf_counter() - start < 2.0
