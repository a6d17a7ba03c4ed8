"""Ground truths from the shipped evaluation sets (data/eval/, docs/algorithm.md [data-layout]).

The CPU venv has neither pyarrow nor pandas, so these strings were read out of
``math500.parquet`` / ``amc2023.parquet`` once and are hard-coded here. If pyarrow is installed,
``test_hardcoded_truths_are_in_the_parquet_files`` checks that they still match the files.
"""
from pathlib import Path

import pytest

from dcpo_mcore.reward import MathVerifier

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "eval"

# (ground truth as stored, an equivalent answer a model might box, a wrong answer)
MATH500_CASES = [
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\frac{\\pi}{2})", "(3, \\pi)"),
    ("\\frac{14}{3}", "14/3", "\\frac{13}{3}"),
    ("\\text{Evelyn}", "Evelyn", "Navin"),
    ("90^\\circ", "90", "45^\\circ"),
    ("3\\sqrt{13}", "\\sqrt{117}", "\\sqrt{13}"),
    ("6 - 5i", "6-5i", "6+5i"),
    ("1,-2", "-2, 1", "1, 2"),
    ("11\\sqrt2", "11\\sqrt{2}", "11"),
    ("\\frac{243}{625}", "0.3888", "\\frac{243}{624}"),
    ("10,\\!080", "10080", "1008"),
    ("\\$32,\\!348", "32348", "32347"),
    ("(-\\infty, 0]", "(-\\infty,0]", "(-\\infty,0)"),
    ("\\dfrac{17}{50}", "0.34", "0.35"),
    ("x^5 - x^4 + x^3 - x^2 + x - 1", "x^5-x^4+x^3-x^2+x-1", "x^5+x^4+x^3+x^2+x+1"),
    ("\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}", "\\begin{pmatrix}-2\\\\-14\\\\-7\\end{pmatrix}",
     "\\begin{pmatrix} 2 \\\\ -14 \\\\ -7 \\end{pmatrix}"),
    ("137 \\frac{1}{2}", "137.5", "137"),
    ("5.4 \\text{ cents}", "5.4", "54"),
    ("-\\frac{\\pi}{6}", "-\\pi/6", "\\frac{\\pi}{6}"),
    (".0000672", "0.0000672", "0.000672"),
]

AMC2023_TRUTHS = ["27", "36", "45", "3159", "7", "21", "3", "1", "4", "5", "29", "96", "-1", "265", "1625", "901"]

# More MATH500 ground truths, each must be graded correct against itself.
MATH500_MORE_TRUTHS = [
    "p - q", "\\frac{3}{56}", "\\sqrt{51}", "\\pi", "6+9i", "x=5", "-2 + 7i", "52_8", "\\frac{243}{625}",
    "3, 5, 7", "70 \\sqrt{2}", "1.25", "(6,31,-1)", "\\cot x", "(-2,1)", "1 \\pm \\sqrt{19}", "\\text{east}",
    "2k+2", "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}", "(a+5)(b+2)", "(3,4]", "\\frac43",
    "\\frac{270}7\\text{ degrees}", "5x - 7y + 11z + 4 = 0", "(2,\\infty)", "11,\\! 111,\\! 111,\\! 100",
    "\\text{(C)}", "288 \\pi", "\\frac 59", "864 \\mbox{ inches}^2", "1\\frac{4}{5}", "\\{1\\pm\\sqrt{5},-2\\}",
    "\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]", "(-\\infty, 2) \\cup (3, \\infty)", "y = 2x + 3",
    "\\$18.90", "15\\mbox{ cm}^2", "x \\in [-2,7]", "58,500", "4210_{5}",
]


@pytest.fixture(scope="module")
def verifier():
    return MathVerifier(scheme="ternary")


@pytest.mark.parametrize("truth, equivalent, wrong", MATH500_CASES)
def test_math500_truths(verifier, truth, equivalent, wrong):
    assert verifier.grade(f"\\boxed{{{equivalent}}}", truth).reward == 1.0
    assert verifier.grade(f"Therefore \\boxed{{{truth}}}.", truth).reward == 1.0
    assert verifier.grade(f"\\boxed{{{wrong}}}", truth).reward == 0.0
    assert verifier.grade(f"the answer is {equivalent}", truth).reward == -1.0


@pytest.mark.parametrize("truth", AMC2023_TRUTHS)
def test_amc2023_integer_truths(verifier, truth):
    value = int(truth)
    assert verifier.grade(f"\\boxed{{{value}}}", truth).correct
    assert verifier.grade(f"\\boxed{{{value}.0}}", truth).correct
    assert not verifier.grade(f"\\boxed{{{value + 1}}}", truth).correct
    assert not verifier.grade(f"\\boxed{{{value * 10}}}", truth).correct
    assert not verifier.grade(f"\\boxed{{{value}.5}}", truth).correct


@pytest.mark.parametrize("truth", MATH500_MORE_TRUTHS)
def test_math500_truth_matches_itself(verifier, truth):
    assert verifier.grade(f"\\boxed{{{truth}}}", truth).correct


def test_hardcoded_truths_are_in_the_parquet_files():
    pq = pytest.importorskip("pyarrow.parquet")
    stored = set()
    for name in ("math500.parquet", "amc2023.parquet"):
        for row in pq.read_table(DATA_DIR / name, columns=["reward_model"]).column("reward_model").to_pylist():
            stored.add(row["ground_truth"])
    expected = {case[0] for case in MATH500_CASES} | set(AMC2023_TRUTHS) | set(MATH500_MORE_TRUTHS)
    assert expected <= stored, sorted(expected - stored)


def _all_truths(name):
    pq = pytest.importorskip("pyarrow.parquet")
    rows = pq.read_table(DATA_DIR / name, columns=["reward_model"]).column("reward_model").to_pylist()
    return sorted({row["ground_truth"] for row in rows})


@pytest.mark.parametrize("name", ["math500.parquet", "amc2023.parquet", "aime_2024.parquet", "aime_2025.parquet"])
def test_every_shipped_truth_grades_itself_correct(verifier, name):
    truths = _all_truths(name)
    assert truths
    for truth in truths:
        assert verifier.grade(f"\\boxed{{{truth}}}", truth).correct, truth
        if truth.lstrip("-").isdigit():  # integer answers: a near miss must be wrong
            assert not verifier.grade(f"\\boxed{{{int(truth) + 1}}}", truth).correct, truth
