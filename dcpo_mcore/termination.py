"""SIGTERM that cannot be lost: the handler records the signal, then unwinds like Ctrl-C.

The handler raises ``SystemExit(128 + signum)`` wherever the main thread is, so blocking work stops at
once and the trainer's teardown stops the servers and workers it started. Python runs a signal handler
at the next bytecode of whatever the main thread executes, and that can be a finalizer (``__del__``, a
weakref callback, the garbage collector): an exception raised there is printed as "Exception ignored"
and dropped, and the run would carry on as if never told to stop. So the signal is also recorded, and
the training loop calls :func:`raise_if_terminated` at every step boundary.
"""
from __future__ import annotations

import signal

__all__ = ["exit_cleanly_on_sigterm", "raise_if_terminated"]

_received: list[int | None] = [None]


def _on_term(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    _received[0] = signum
    raise SystemExit(128 + signum)


def exit_cleanly_on_sigterm() -> None:
    """Install the handler (main thread only, as for every Python signal handler)."""
    signal.signal(signal.SIGTERM, _on_term)


def raise_if_terminated() -> None:
    """Re-raise a SIGTERM whose first ``SystemExit`` was swallowed by a finalizer."""
    if _received[0] is not None:
        raise SystemExit(128 + _received[0])
