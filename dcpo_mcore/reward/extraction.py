"""Extract the final answer from a model response: the content of the LAST ``\\boxed{...}``.

Rules (docs/algorithm.md [reward-extraction], mirroring the authors' DCPO grader):

* Only the literal command ``\\boxed`` immediately followed by ``{`` counts. ``\\fbox{..}``,
  ``\\boxed {..}`` (whitespace before the brace) and ``\\boxed5`` are *not* boxes.
* It is the LAST ``\\boxed`` command in the text that decides. If that one is malformed (not followed
  by ``{``) or its braces never balance (e.g. a truncated response), the response has no parsable
  answer: we do NOT fall back to an earlier box, because the model's final statement is broken.
* Braces are matched by counting ``{`` and ``}`` (escaped ``\\{``/``\\}`` are counted as well; they
  come in pairs in well-formed answers such as ``\\{1,2\\}``).

The scan is an iterative, single pass over the text (no recursion, no regex backtracking), so 10^5
nested braces or a 100 KB response cost linear time and cannot overflow the stack.
"""
from __future__ import annotations

BOXED_COMMAND = "\\boxed"


def _last_boxed_command_start(text: str) -> int:
    """Index of the last ``\\boxed`` that is a whole command name, or -1.

    ``\\boxedfoo`` would be a different LaTeX command, so a letter right after ``\\boxed`` means
    "keep searching to the left". Each ``rfind`` scans a strictly shorter prefix, so the total work
    stays linear in ``len(text)``.
    """
    end = len(text)
    while True:
        start = text.rfind(BOXED_COMMAND, 0, end)
        if start < 0:
            return -1
        after = start + len(BOXED_COMMAND)
        if after < len(text) and text[after].isalpha():
            end = start + len(BOXED_COMMAND) - 1  # exclude this hit, keep looking left
            continue
        return start


def extract_last_boxed(text: str | None) -> str | None:
    """Return the content of the last ``\\boxed{...}`` in ``text``, or ``None`` if unparsable.

    The returned string is the raw content between the outer braces (not stripped), e.g.
    ``extract_last_boxed("so \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"``.
    """
    if not text:
        return None
    start = _last_boxed_command_start(text)
    if start < 0:
        return None
    open_brace = start + len(BOXED_COMMAND)
    if open_brace >= len(text) or text[open_brace] != "{":
        return None  # ``\boxed 5``, ``\boxed {5}`` or a trailing ``\boxed``: not a literal box
    depth = 0
    for pos in range(open_brace, len(text)):
        char = text[pos]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_brace + 1 : pos]
    return None  # braces never closed: unbalanced (typically a truncated response)
