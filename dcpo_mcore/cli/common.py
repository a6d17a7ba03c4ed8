"""What every dcpo-* command shares: the one-line argparse parser, the user-error/bug split, the log
file, SIGTERM handling and the CPU allocator's environment.

argparse's default prints the whole usage block before the error; our commands report their own input
errors in one line (exit 2), so argparse's are made to look the same (:class:`OneLineErrorParser`).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from dcpo_mcore.termination import exit_cleanly_on_sigterm  # noqa: F401 - SIGTERM unwinds like Ctrl-C

__all__ = ["OneLineErrorParser", "cpu_allocator_env", "exit_cleanly_on_sigterm", "log_to_file",
           "run_reporting_errors"]


class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str):
        tool = self.prog.split()[0]  # "dcpo-convert import" -> "dcpo-convert", as the other errors say
        print(f"{tool}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def cpu_allocator_env() -> None:
    """Transparent huge pages for torch's CPU allocator (2-4x faster fresh 512 MiB weight-sync buffers;
    docs/performance.md). torch reads the variable at the process's first CPU allocation, which has
    not happened yet when an entry point starts; an explicit setting in the environment wins."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def log_to_file(path: Path) -> Path:
    """Everything logged in this process also goes to ``path`` (appended: a resumed run keeps its history)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return path


def run_reporting_errors(prog: str, work, log_file: Path | None):
    """``work()``, with a user's mistake (:func:`dcpo_mcore.errors.is_user_error`) reported in one line
    (returns ``(False, None)``), and a bug left to raise with its full traceback, after one line saying
    where the log is. ``(True, result)`` otherwise."""
    from dcpo_mcore.errors import is_user_error

    try:
        return True, work()
    except Exception as exc:
        if is_user_error(exc):
            logging.getLogger(__name__).debug("%s failed", prog, exc_info=True)
            print(f"{prog}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return False, None
        logging.getLogger(__name__).error("%s: internal error (a bug: please report it with this traceback)",
                                          prog, exc_info=True)
        where = f"; the run's log is {log_file}" if log_file is not None else ""
        print(f"{prog}: internal error {type(exc).__name__} (a bug; full traceback follows{where})",
              file=sys.stderr, flush=True)
        raise
