"""MATH-style normalisation of answer strings, plus exact parsing of plain numeric literals.

The normaliser removes presentation-only differences so that a plain string comparison catches
most equal answers cheaply, in the trainer process, without sympy:
``\\left( 3, \\dfrac{\\pi}{2} \\right)`` and ``(3,\\frac{\\pi}{2})`` normalise to the same string.

Every regex here is linear-time (no nested quantifiers), and callers cap the input length anyway,
because this runs on untrusted model output in the trainer's own process.
"""
from __future__ import annotations

import re
from fractions import Fraction

# ``\mbox{ cm}``, ``\textbf{..}``, ``\mathrm{..}``: all treated like ``\text{..}``.
_TEXT_ALIASES = re.compile(r"\\(?:mbox|textbf|textrm|textit|mathrm|mathbf|text)\s*\{")
# Text beginning with a space after a value is a unit by MATH convention: ``5.4 \text{ cents}``,
# ``864 \mbox{ inches}^2``.
_SPACED_UNIT = re.compile(r"\\text\{\s[^{}]*\}(?:\^\{?\d\}?)?")
_UNIT_WORDS = (
    "units?|degrees?|cm|mm|km|m|meters?|inches|inch|feet|foot|ft|miles?|mph|hours?|minutes?|"
    "seconds?|days?|years?|dollars?|cents?|pounds?|grams?|kg|g|liters?|square|sq"
)
# A unit written without the leading space, right after a number: ``10\text{cm}^2``.
_TRAILING_UNIT = re.compile(r"(?<=[\d}])\\text\{(?:" + _UNIT_WORDS + r")\}(?:\^\{?\d\}?)?$")
_TEXT_CONTENT = re.compile(r"\\text\{([^{}]*)\}")
# ``\left(`` / ``\right]`` but not ``\leftarrow`` / ``\rightarrow``.
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![a-zA-Z])")
_SPACING = re.compile(r"(?<!\\)\\[!,;:> ]|\\q?quad(?![a-zA-Z])|~")
_DEGREES = re.compile(r"\^\{?\\circ\}?|\\circ(?![a-zA-Z])|°|\\degree(?![a-zA-Z])")
_PERCENT_DOLLAR = re.compile(r"\\%|%|\\\$|\$")
_FRAC_ALIASES = re.compile(r"\\[dt]frac(?![a-zA-Z])")
# Shorthand arguments: ``\frac12``, ``\frac 59``, ``\frac{270}7``, ``\frac9{19}``, ``\sqrt2``.
_FRAC_TWO_DIGITS = re.compile(r"\\frac(\d)(\d)")
_FRAC_DIGIT_THEN_GROUP = re.compile(r"\\frac(\d)\{")
_FRAC_GROUP_THEN_DIGIT = re.compile(r"\\frac\{([^{}]*)\}(\d)")
_SQRT_SHORT = re.compile(r"\\sqrt([0-9a-zA-Z])")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_SIMPLE_SLASH_FRACTION = re.compile(r"(-?\d+)/(\d+)")
# ``x=5``, ``k = 3``, ``a_1=2``: a short variable on the left is presentation, not answer.
_SHORT_LHS = re.compile(r"[a-zA-Z](?:_\{?[a-zA-Z0-9]\}?)?=")

_INT_LITERAL = re.compile(r"[+-]?\d+")
_DECIMAL_LITERAL = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+)")
_FRACTION_LITERAL = re.compile(r"([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}")
_MIXED_NUMBER = re.compile(r"(\d+)\\frac\{(\d+)\}\{(\d+)\}")


def _remove_text_wrappers(answer: str) -> str:
    """Drop unit annotations and unwrap ``\\text{..}`` to its content."""
    answer = _TEXT_ALIASES.sub(r"\\text{", answer)
    answer = _SPACED_UNIT.sub("", answer)
    answer = _TRAILING_UNIT.sub("", answer.rstrip())
    return _TEXT_CONTENT.sub(r"\1", answer)


def _canonical_shorthand(answer: str) -> str:
    """Write ``\\frac`` and ``\\sqrt`` arguments in full braces (``\\frac12`` -> ``\\frac{1}{2}``)."""
    answer = _FRAC_ALIASES.sub(r"\\frac", answer)
    answer = _FRAC_TWO_DIGITS.sub(r"\\frac{\1}{\2}", answer)
    answer = _FRAC_DIGIT_THEN_GROUP.sub(r"\\frac{\1}{", answer)
    answer = _FRAC_GROUP_THEN_DIGIT.sub(r"\\frac{\1}{\2}", answer)
    return _SQRT_SHORT.sub(r"\\sqrt{\1}", answer)


def normalize_answer(answer: str) -> str:
    """Return a canonical string form of a (LaTeX) answer for plain string comparison.

    Removes ``$``, ``\\left``/``\\right``, LaTeX spacing, degree signs, ``%``, text units and all
    whitespace; unifies ``\\dfrac``/``\\tfrac``/shorthand fractions; drops thousands separators in
    numbers, a leading ``+``, a trailing ``.``, and a short ``x =`` prefix; writes ``a/b`` of two
    integers as ``\\frac{a}{b}``. It never simplifies mathematics: ``2/4`` stays ``\\frac{2}{4}``.
    """
    answer = answer.strip()
    answer = _remove_text_wrappers(answer)
    answer = _LEFT_RIGHT.sub("", answer)
    answer = _SPACING.sub("", answer)
    answer = _DEGREES.sub("", answer)
    answer = _PERCENT_DOLLAR.sub("", answer)
    answer = answer.replace("\\displaystyle", "").replace("{,}", ",")
    answer = "".join(answer.split())  # all whitespace, including newlines and tabs
    answer = _canonical_shorthand(answer)
    if _THOUSANDS.fullmatch(answer):
        answer = answer.replace(",", "")
    if answer.endswith(".") and not answer.endswith(".."):
        answer = answer[:-1]  # a sentence's full stop ("10."), not an ellipsis
    if answer.count("=") == 1:
        lhs = _SHORT_LHS.match(answer)
        if lhs is not None:
            answer = answer[lhs.end() :]
    if answer.startswith("+"):
        answer = answer[1:]
    if answer.startswith("."):
        answer = "0" + answer
    elif answer.startswith("-."):
        answer = "-0" + answer[1:]
    slash = _SIMPLE_SLASH_FRACTION.fullmatch(answer)
    if slash is not None:
        answer = "\\frac{%s}{%s}" % (slash.group(1), slash.group(2))
    return answer


def is_integer_literal(normalized: str) -> bool:
    """True for ``42``, ``-7``, ``+3`` (already normalised: no spaces, no thousands commas)."""
    return _INT_LITERAL.fullmatch(normalized) is not None


def parse_decimal_literal(normalized: str) -> Fraction | None:
    """Exact value of an integer or decimal literal (``10``, ``-0.25``, ``10.0``), else ``None``."""
    if _INT_LITERAL.fullmatch(normalized) or _DECIMAL_LITERAL.fullmatch(normalized):
        try:
            return Fraction(normalized)
        except ValueError:  # more digits than Python's int-string limit (4300): not a sane answer
            return None
    return None


def parse_numeric_literal(normalized: str) -> Fraction | None:
    """Exact value of a plain number: integer, decimal, ``\\frac{a}{b}`` of integers, mixed number.

    Returns ``None`` for anything else (expressions, symbols, scientific notation). Used for exact
    comparisons such as ``0.5`` vs ``\\frac{1}{2}`` without sympy. Callers cap the input length
    upstream, so ``int()`` never sees more than about a thousand digits (Python's limit is 4300).
    """
    decimal = parse_decimal_literal(normalized)
    if decimal is not None:
        return decimal
    fraction = _FRACTION_LITERAL.fullmatch(normalized)
    if fraction is not None:
        sign, numerator, denominator = fraction.groups()
        value = _safe_fraction(numerator, denominator)
        return -value if (value is not None and sign == "-") else value
    mixed = _MIXED_NUMBER.fullmatch(normalized)
    if mixed is not None:
        whole, numerator, denominator = mixed.groups()
        value = _safe_fraction(numerator, denominator)
        return None if value is None else int(whole) + value
    return None


def _safe_fraction(numerator: str, denominator: str) -> Fraction | None:
    """``Fraction(numerator, denominator)``, or ``None`` for a zero or absurdly long denominator."""
    try:
        value_denominator = int(denominator)
        return None if value_denominator == 0 else Fraction(int(numerator), value_denominator)
    except ValueError:
        return None
