"""Start N rank processes on this machine and supervise them until they finish, fail or hang.

The one implementation behind every local multi-rank launcher: ``dcpo-convert``'s spawner
(:mod:`dcpo_mcore.convert.spawn`), the test launcher (``tests/dist/launcher.py``) and the benchmark
tools (``tools/rank_runner.py``). Each keeps only its own protocol (what a rank is told, how it reports)
and its own error type.

Why it is done this way (docs/architecture.md [conv-fresh-ranks]):

* every rank is a fresh ``python`` interpreter, never a fork of the supervisor: the supervisor is
  multi-threaded from ``import torch`` on (and the rendezvous store adds a server thread), and a child
  forked from a multi-threaded process can inherit a lock another thread held -- the 4-rank conversion
  that hung in CI with four empty logs;
* the supervisor hosts the rendezvous ``TCPStore`` on a port the OS picked and holds it for the whole
  run, so there is no "find a free port, release it, hope nobody takes it" race;
* every rank leads its own session, so killing it takes the helpers it started (dist_checkpointing's
  writer processes) with it, and nothing outlives a launch;
* after the first rank fails, the others (typically blocked in a collective waiting for it) get
  ``grace_s`` to report their own error and are then killed;
* past the deadline every stuck rank is first asked for its Python stacks (SIGUSR1, see
  :mod:`dcpo_mcore.rank_diagnostics`), so a hang says where it was, then all are killed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Mapping

from dcpo_mcore.rank_diagnostics import dump_stacks, last_line, mark

__all__ = ["REPO_ROOT", "rank_env", "host_rendezvous", "join_rendezvous", "LocalRanks", "Supervision"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def rank_env(base: Mapping[str, str], world: int, *, threads: int | None = None) -> dict[str, str]:
    """The environment every rank starts from: ``base`` with this checkout first on ``PYTHONPATH``,
    unbuffered output (a hung rank's last line is in its log, not in a buffer) and ``OMP_NUM_THREADS``
    set to ``threads`` or, when ``base`` does not set it, to the cores shared out between the ranks
    instead of every rank oversubscribing all of them. ``RANK``/``LOCAL_RANK`` are the caller's to set."""
    env = dict(base)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["PYTHONUNBUFFERED"] = "1"
    env["WORLD_SIZE"] = str(world)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    elif "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // world))
    for var in ("RANK", "LOCAL_RANK"):
        env.pop(var, None)
    return env


def host_rendezvous(world: int, timeout_s: float):
    """The supervisor's ``TCPStore`` for ``world`` ranks (plus itself) on an OS-picked port; keep the
    returned object alive until the ranks are done (``.port`` is what the ranks are told)."""
    import torch.distributed as dist

    return dist.TCPStore("127.0.0.1", 0, world + 1, is_master=True, wait_for_workers=False,
                         timeout=timedelta(seconds=max(timeout_s, 1.0)))


def join_rendezvous(port: int, rank: int, world: int, backend: str, timeout_s: float) -> None:
    """Rank side of :func:`host_rendezvous`: form the default process group, with a progress line on
    this rank's log before and after (a rank stuck here says so)."""
    import torch.distributed as dist

    timeout = timedelta(seconds=max(timeout_s, 1.0))
    mark(f"joining the rendezvous at 127.0.0.1:{port}")
    store = dist.TCPStore("127.0.0.1", port, world + 1, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    mark(f"process group of {world} ranks ready ({backend})")


@dataclass
class Supervision:
    """How a supervised run ended."""

    exit_order: list[int]  # ranks in the order they exited
    stuck: list[int] = field(default_factory=list)  # ranks still running at the deadline (then killed)
    where: str = ""  # for a timeout: each stuck rank's last progress line

    @property
    def timed_out(self) -> bool:
        return bool(self.stuck)


@dataclass
class LocalRanks:
    """``world`` rank processes, each logging to ``log_dir/rank{r}.log``."""

    procs: list[subprocess.Popen]
    logs: list[Path]

    @classmethod
    def start(cls, argv: Callable[[int], list[str]], world: int, env: Mapping[str, str], log_dir: Path, *,
              rank0_stdout_to_terminal: bool = False, cwd: Path | None = None) -> "LocalRanks":
        """Start ``argv(r)`` for every rank ``r`` with ``env`` plus ``RANK``/``LOCAL_RANK``. Output goes
        to the rank's log; with ``rank0_stdout_to_terminal`` rank 0's stdout (its progress display)
        stays on this terminal. If a start fails, the ranks already started are killed."""
        ranks = cls([], [])
        try:
            for r in range(world):
                log_path = log_dir / f"rank{r}.log"
                with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
                    out = None if (r == 0 and rank0_stdout_to_terminal) else log
                    err = log if out is None else subprocess.STDOUT
                    ranks.procs.append(subprocess.Popen(
                        argv(r), env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), cwd=cwd, stdout=out,
                        stderr=err, start_new_session=True))
                ranks.logs.append(log_path)
        except BaseException:
            ranks.kill()
            raise
        return ranks

    def supervise(self, timeout_s: float | None, grace_s: float | None) -> Supervision:
        """Wait until every rank has exited, or ``grace_s`` after the first failure (``None``: wait for
        all), or ``timeout_s`` from now (``None``: no deadline). At the deadline the stuck ranks' stacks
        are dumped into their logs and every rank is killed. Survivors of an early return are left to
        :meth:`kill`, which the caller runs in any case."""
        deadline = time.monotonic() + timeout_s if timeout_s else None
        order: list[int] = []
        failed_at = None
        while True:
            for r, p in enumerate(self.procs):
                if r not in order and p.poll() is not None:
                    order.append(r)
                    if p.returncode != 0 and failed_at is None:
                        failed_at = time.monotonic()
            if len(order) == len(self.procs):
                return Supervision(order)
            now = time.monotonic()
            if failed_at is not None and grace_s is not None and now - failed_at >= grace_s:
                return Supervision(order)
            if deadline is not None and now >= deadline:
                stuck = [r for r in range(len(self.procs)) if r not in order]
                dump_stacks([self.procs[r].pid for r in stuck])
                self.kill()
                where = "; ".join(last_line(self.logs[r], r) for r in stuck)
                return Supervision(order, stuck, where)
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL every rank's whole session (its helpers too) and reap it; idempotent."""
        for p in self.procs:
            # Also when the rank itself has exited: helpers it left in its session die with the group.
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
