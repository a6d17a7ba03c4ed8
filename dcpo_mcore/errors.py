"""The one line between a user's mistake and our bug.

:class:`UserError` marks a problem with what the user gave us or the world around the run: a config, a
data row, a path, a checkpoint, a server that does not answer. The command-line tools report those in
one line and exit non-zero. Anything else is a bug (a shape error, an OOM, a broken invariant) and
keeps its full traceback. Each room's own error classes derive from it, beside the builtin they were
(``ValueError``, ``RuntimeError``), so existing ``except`` clauses keep working.
"""
from __future__ import annotations

__all__ = ["UserError", "UserValueError", "is_user_error", "one_line"]


class UserError(Exception):
    """A problem with the user's input or environment, reported in one line (no traceback)."""


class UserValueError(UserError, ValueError):
    """A value the user chose (a setting, a checkpoint, a layout) that cannot work, in one line."""


# Builtins that mean "a path the user named is wrong", not a bug in our code.
_PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, (UserError, *_PATH_ERRORS))


def one_line(what: BaseException | str, limit: int | None = 300, *, typed: bool = False) -> str:
    """``what`` (an exception or a text) as one line for an error message: its first informative line
    (the first with a letter or digit, else the first non-blank one; library and server messages are
    often multi-line, with the summary first), whitespace collapsed, cut to ``limit`` characters with
    ``...`` (``None``: never cut; for our own messages, which end with what to do).

    An exception without a message gives its type's name; ``typed=True`` gives ``"Type: line"`` (just
    ``"Type"`` when there is no message). A text without any gives ``""``.
    """
    lines = [" ".join(line.split()) for line in str(what).splitlines()]
    lines = [line for line in lines if line]
    text = next((line for line in lines if any(c.isalnum() for c in line)), lines[0] if lines else "")
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 3, 0)] + "..."
    if not isinstance(what, BaseException):
        return text
    name = type(what).__name__
    if not text:
        return name
    return f"{name}: {text}" if typed else text
