"""The one line between a user's mistake and our bug.

:class:`UserError` marks a problem with what the user gave us or the world around the run: a config, a
data row, a path, a checkpoint, a server that does not answer. The command-line tools report those in
one line and exit non-zero. Anything else is a bug (a shape error, an OOM, a broken invariant) and
keeps its full traceback. Each room's own error classes derive from it, beside the builtin they were
(``ValueError``, ``RuntimeError``), so existing ``except`` clauses keep working.
"""
from __future__ import annotations

__all__ = ["UserError", "UserValueError", "is_user_error"]


class UserError(Exception):
    """A problem with the user's input or environment, reported in one line (no traceback)."""


class UserValueError(UserError, ValueError):
    """A value the user chose (a setting, a checkpoint, a layout) that cannot work, in one line."""


# Builtins that mean "a path the user named is wrong", not a bug in our code.
_PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, (UserError, *_PATH_ERRORS))
