"""Grading worker process, started by ``RewardPool`` as ``python -m dcpo_mcore.reward.worker``.

Why a fresh interpreter per worker (``subprocess``), not ``multiprocessing``: the trainer has
threads and torch state that a fork would copy, and ``spawn``/``forkserver`` re-import the
trainer's ``__main__`` (torch, megatron: seconds per respawn) or change process-global settings.
A plain ``python -m`` child imports only sympy/math-verify, once, and stays alive; the parent kills
it with SIGKILL when an answer runs past its timeout (SIGKILL works even while sympy is inside a
C-level big-integer operation that never returns to the interpreter).

Protocol: one JSON object per line. The worker first writes ``{"ready": true, "pid": ...}`` once
warmed up, then answers each request ``{"id", "kind", "pred", "ground_truths"}`` with
``{"id", "correct", "error"}``. One request at a time; EOF on stdin means "shut down".
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

from dcpo_mcore.reward.grading import SymbolicJob
from dcpo_mcore.reward.symbolic_checks import run_symbolic_job

# Answers of each common shape, graded once before the worker reports ready: math-verify and sympy
# initialise a lot lazily per construct (0.1-0.5 s each on a busy CPU), which would otherwise be
# charged to the first real answers and could push them past a short timeout.
WARM_UP_JOBS = [
    SymbolicJob("math", "\\frac{1}{2}", ("0.5",)),
    SymbolicJob("math", "(3,\\pi/2)", ("\\left( 3, \\frac{\\pi}{2} \\right)",)),
    SymbolicJob("math", "[3,4]", ("(3,4] \\cup \\{5\\}",)),
    SymbolicJob("math", "q-p", ("p - q",)),
    SymbolicJob("math", "y = 2x + 3", ("x^2+1-5i",)),
    SymbolicJob("math", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",)),
]


def _exit_when_orphaned(parent_pid: int, poll_s: float = 1.0) -> None:
    """Exit if the trainer died without closing the pool, so no worker outlives it for long.

    Measured: 1-5 s after the parent's death (a sympy call stuck in C code holds the GIL and delays
    this thread; stdin EOF ends an idle worker at once).
    """

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _limit_address_space(limit_mb: int | None) -> None:
    """Turn runaway big-number allocations into a MemoryError instead of swapping the node."""
    if not limit_mb:
        return
    import resource

    limit = int(limit_mb) * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _handle(request: dict) -> dict:
    job = SymbolicJob(kind=request["kind"], pred=request["pred"], ground_truths=tuple(request["ground_truths"]))
    try:
        return {"id": request["id"], "correct": run_symbolic_job(job), "error": None}
    except Exception as exc:  # noqa: BLE001 - MemoryError, RecursionError, sympy errors: all "wrong"
        return {"id": request["id"], "correct": False, "error": f"{type(exc).__name__}: {exc}"[:200]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parent-pid", type=int, default=os.getppid())
    parser.add_argument("--memory-limit-mb", type=int, default=0)
    args = parser.parse_args(argv)

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the trainer; we exit on EOF
    _exit_when_orphaned(args.parent_pid)
    # Keep the protocol channel private: point fd 1 (and sys.stdout) at stderr so that anything a
    # library prints, even from C, cannot corrupt the JSON lines the parent reads.
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    _limit_address_space(args.memory_limit_mb)
    for job in WARM_UP_JOBS:  # import math-verify and build its parsers now, not on real answers
        run_symbolic_job(job)

    def send(message: dict) -> None:
        protocol_out.write(json.dumps(message).encode() + b"\n")
        protocol_out.flush()

    send({"ready": True, "pid": os.getpid()})
    for line in sys.stdin.buffer:
        if line.strip():
            send(_handle(json.loads(line)))


if __name__ == "__main__":
    main()
