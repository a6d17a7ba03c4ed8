"""Stop a launched process group when its owner dies, even by SIGKILL.

A trainer stops the SGLang servers it launched on a normal exit, an exception or SIGTERM. A SIGKILL (the
OOM killer, ``kill -9``, a node agent) runs none of that, and the servers, started in their own session so
that a whole group can be stopped, would live on holding ports and memory. So every launch also starts
this small watcher as a child of the owner:

    python guardian.py PGID OWNER_PID

It runs in its own session, so a signal to the owner's process group (Ctrl-C, ``kill -- -PGID``) does not
take it down with the owner. It polls once a second. If the group has no live members, the process was stopped normally and the
watcher exits. If the watcher's parent changed (the owner died and the watcher was re-parented), it
sends SIGTERM to the group, waits up to 20 s, then SIGKILLs what is left.

This file is run by path (``python -I -S``: isolated, so no module of this directory can shadow the
standard library's), never imported as part of the
package, so it starts in ~50 ms without torch; ``process.py`` imports :func:`group_members` from it.
"""
from __future__ import annotations

import os
import signal
import sys
import time

POLL_S = 1.0
GRACE_S = 20.0


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) PIDs whose process group and session are ``pgid`` (from /proc)."""
    pids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            # fields after the ")" closing the command name: state ppid pgrp session ...
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] != "Z" and int(fields[2]) == pgid and int(fields[3]) == pgid:
                pids.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def _signal_members(pgid: int, sig: int) -> None:
    # Only members of the group AND session pgid are signalled: a recycled pid elsewhere is never touched.
    for pid in group_members(pgid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def watch(pgid: int, owner: int) -> int:
    while os.getppid() == owner:
        if not group_members(pgid):
            return 0  # stopped by its owner (or it exited): nothing to do
        time.sleep(POLL_S)
    if not group_members(pgid):
        return 0
    print(f"[dcpo guardian] owner pid {owner} died; stopping process group {pgid}", file=sys.stderr, flush=True)
    _signal_members(pgid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and group_members(pgid):
        time.sleep(0.2)
    _signal_members(pgid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    # The owner is the parent at start-up; if it already died, getppid() is not it and we act at once.
    if len(sys.argv) != 3:
        sys.exit("usage: guardian.py PGID OWNER_PID")
    sys.exit(watch(int(sys.argv[1]), int(sys.argv[2])))
