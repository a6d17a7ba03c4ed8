"""Start N rank processes of a benchmark script and collect one JSON result from each.

Shared by tools/bench_engine.py and tools/bench_loss.py. Every rank runs in its own session (so killing
it takes its helpers too) with RANK / LOCAL_RANK / WORLD_SIZE set and this repository on PYTHONPATH,
writes its output to its own log, and must write its JSON result to the path it is given. The run has
one deadline for all ranks; ranks still running after it are killed. A rank that produced no result
raises one error with the tail of its log.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_rank_processes(argv: Callable[[int, Path], list[str]], world: int, env: Mapping[str, str],
                       timeout_s: float, label: str) -> list[dict]:
    """``argv(rank, result_path)`` is rank ``rank``'s command line; returns the results in rank order."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{label}_"))
    base = dict(env, WORLD_SIZE=str(world),
                PYTHONPATH=os.pathsep.join([str(REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]))
    procs = []
    try:
        for rank in range(world):
            with open(tmp / f"rank{rank}.log", "wb") as log:  # the child keeps its own copy of the fd
                procs.append(subprocess.Popen(argv(rank, tmp / f"rank{rank}.json"),
                                              env=dict(base, RANK=str(rank), LOCAL_RANK=str(rank)),
                                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    results = []
    for rank, proc in enumerate(procs):
        path = tmp / f"rank{rank}.json"
        if proc.returncode != 0 or not path.exists():
            tail = (tmp / f"rank{rank}.log").read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{label}: rank {rank} failed (exit {proc.returncode}), no result; log {tmp}:\n{tail}")
        results.append(json.loads(path.read_text()))
    return results
