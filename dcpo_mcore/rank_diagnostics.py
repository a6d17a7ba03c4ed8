"""Where a hung rank was: progress lines on its log, and its Python stacks on request.

Used by every local multi-rank launcher (``dcpo-convert``'s spawner and the test launcher). A rank calls
:func:`arm` first: SIGUSR1 then makes it write every thread's Python stack to stderr (its log), which
works even while it is blocked in a collective or a system call. :func:`mark` writes ``rank R: ...``
lines as it goes. A supervisor that gives up on a job calls :func:`dump_stacks` before killing the
ranks, and :func:`last_line` to say in its error where each one stopped. Stdlib only: rank entry
points import this before torch.
"""
from __future__ import annotations

import faulthandler
import os
import signal
import sys
import time
from pathlib import Path

__all__ = ["arm", "mark", "dump_stacks", "last_line"]

_rank: list[str | None] = [None]  # set by arm(); until then mark() is silent (an external launcher's
# ranks write to the user's terminal, where stderr is for our one-line error)


def arm(rank: int) -> None:
    """This process is rank ``rank``: SIGUSR1 dumps its stacks to stderr; say that it started."""
    _rank[0] = str(rank)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    mark(f"started (pid {os.getpid()})")


def mark(where: str) -> None:
    """One progress line on this rank's log (stderr): a hung rank's last one says where it stopped."""
    if _rank[0] is None:
        return
    print(f"rank {_rank[0]}: {where}", file=sys.stderr, flush=True)


def dump_stacks(pids: list[int], wait_s: float = 2.0) -> None:
    """Ask hung ranks for their Python stacks (SIGUSR1, see :func:`arm`) before they are killed."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass
    time.sleep(wait_s)


def last_line(log: Path, rank: int) -> str:
    """The last progress line (``rank R: ...``) rank ``rank`` wrote to ``log`` before its stack dump."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    marks = [ln for ln in lines if ln.startswith(f"rank {rank}: ")]
    return marks[-1] if marks else f"rank {rank}: no progress line in its log"
