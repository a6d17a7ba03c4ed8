"""Start N rank processes of a benchmark script and collect one JSON result from each.

Shared by tools/bench_engine.py and tools/bench_loss.py, on top of the project's one local launcher
(:mod:`dcpo_mcore.local_ranks`, docs/architecture.md [conv-fresh-ranks]): every rank runs in its own
session with RANK / LOCAL_RANK / WORLD_SIZE set and this repository on PYTHONPATH, writes its output to
its own log, and must write its JSON result to the path it is given. The run has one deadline for all
ranks; ranks still running after it write their stacks to their logs and are killed. A rank that
produced no result raises one error with the tail of its log.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Callable, Mapping

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from dcpo_mcore.local_ranks import LocalRanks, rank_env  # noqa: E402


def env_rendezvous(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` plus MASTER_ADDR/MASTER_PORT for ranks that join through the product's ``env://``
    initialisation (engine/parallel.py init_distributed), where rank 0 hosts the store. The port is one
    the OS just had free: a benchmark can lose that race and fail to start, which only costs a rerun;
    the test tier and dcpo-convert avoid it by holding the store themselves (local_ranks.py)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return dict(env, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def run_rank_processes(argv: Callable[[int, Path], list[str]], world: int, env: Mapping[str, str],
                       timeout_s: float, label: str) -> list[dict]:
    """``argv(rank, result_path)`` is rank ``rank``'s command line; returns the results in rank order."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{label}_"))
    ranks = LocalRanks([], [])
    try:
        ranks = LocalRanks.start(lambda r: argv(r, tmp / f"rank{r}.json"), world, rank_env(env, world), tmp)
        outcome = ranks.supervise(timeout_s, grace_s=None)
    finally:
        ranks.kill()
    results = []
    for rank, proc in enumerate(ranks.procs):
        path = tmp / f"rank{rank}.json"
        if proc.returncode != 0 or not path.exists():
            tail = ranks.logs[rank].read_text(errors="replace")[-4000:]
            stuck = f" (still running at the {timeout_s:g} s deadline: {outcome.where})" if rank in outcome.stuck else ""
            raise RuntimeError(f"{label}: rank {rank} failed (exit {proc.returncode}){stuck}, no result; "
                               f"log {tmp}:\n{tail}")
        results.append(json.loads(path.read_text()))
    return results
