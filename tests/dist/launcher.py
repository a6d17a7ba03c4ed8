"""Run one function in N gloo processes, collect per-rank results, and never hang.

Usage (from a test)::

    from tests.dist.launcher import launch

    results = launch("tests.dist.my_worker:check", world_size=4, args=(37,), timeout_s=60)
    # results[r] is what check(37) returned on rank r

The target is a ``"module:function"`` string (or a module-level function, which is turned into one).
The ranks are started and supervised by :mod:`dcpo_mcore.local_ranks` (docs/architecture.md
[conv-fresh-ranks]): each is a fresh ``python`` subprocess (not a fork, so nothing of the parent's state
leaks in and the parent's ``__main__`` is never re-imported). Before the target is called in a rank:

* the default process group is initialised (backend ``gloo`` unless told otherwise) through a
  ``TCPStore`` that the *launcher* process owns for the whole launch: its port is picked by the OS
  and held, so there is no "find a free port, release it, hope nobody takes it" race;
* ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` (127.0.0.1) and ``MASTER_PORT`` (the
  launcher's store) are set, ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` default to 1 and
  ``torch.set_num_threads`` is called with the same value (CI machines have 2 cores);
* the repository root is put on ``PYTHONPATH`` so ``tests.*`` and ``dcpo_mcore.*`` import.

So the target must not call ``init_process_group`` itself; it may build sub-groups with
``dist.new_group`` (every rank must create every group, in the same order) and may call megatron's
``parallel_state.initialize_model_parallel`` on top of the default group.

The target is called as ``fn(*args, **kwargs)``; read the rank with ``dist.get_rank()``. Arguments and
the return value cross process boundaries by pickle, so keep them to plain data (numbers, strings,
lists/dicts, CPU tensors).

Failure handling -- a launch raises :class:`DistLaunchError` (never returns partial results) when:

* any rank raises: the error carries every failing rank's traceback; ranks still running (typically
  blocked in a collective waiting for the dead rank) are killed after ``grace_s``;
* any rank dies without reporting (segfault, ``os._exit``, OOM kill): its exit code is reported;
* the launch runs past ``timeout_s`` (a hung collective): all ranks are killed (SIGKILL to each
  rank's whole process group) and the error names the ranks that had not finished.

The error message ends with the tail of each rank's stdout/stderr, which is otherwise kept in a
temporary directory that is removed afterwards.
"""
from __future__ import annotations

import os
import pickle
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from dcpo_mcore.local_ranks import REPO_ROOT, LocalRanks, Supervision, host_rendezvous, join_rendezvous, rank_env
from dcpo_mcore.rank_diagnostics import arm, mark

_SPEC_FILE = "spec.pkl"


class DistLaunchError(RuntimeError):
    """A multi-process launch failed: a rank raised, died, or the launch timed out."""


def _target_name(target: str | Callable) -> str:
    if isinstance(target, str):
        if ":" not in target:
            raise ValueError(f"target must look like 'package.module:function', got {target!r}")
        return target
    module, name = getattr(target, "__module__", None), getattr(target, "__qualname__", "")
    if not module or module == "__main__" or "." in name or "<" in name:
        raise ValueError(
            f"{target!r} is not an importable module-level function; pass 'module:function' instead"
        )
    return f"{module}:{name}"


def _tail(path: Path, max_chars: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no output>"
    return text if len(text) <= max_chars else "...\n" + text[-max_chars:]


def _read_result(path: Path):
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a corrupt result file is itself a failure to report
        return ("error", f"unreadable result file: {exc!r}")


def launch(
    target: str | Callable,
    world_size: int,
    *,
    args: tuple = (),
    kwargs: dict | None = None,
    timeout_s: float = 120.0,
    grace_s: float = 3.0,
    backend: str = "gloo",
    num_threads: int = 1,
    env: dict[str, str] | None = None,
    log_tail_chars: int = 3000,
) -> list[Any]:
    """Run ``target(*args, **kwargs)`` on ``world_size`` ranks; return the per-rank results in rank order.

    Args:
        target: ``"module:function"`` (or a module-level function) to run on every rank.
        world_size: number of ranks (processes).
        args, kwargs: passed to the target on every rank (pickled).
        timeout_s: wall-clock limit for the whole launch, process start-up included (importing
            torch takes a few seconds per process). Past it every rank is killed.
        grace_s: after the first rank fails, how long the others may still finish (so that their own
            errors are reported too) before they are killed.
        backend: ``torch.distributed`` backend of the default group.
        num_threads: ``OMP_NUM_THREADS`` / ``torch.set_num_threads`` in each rank.
        env: extra environment variables for the ranks (override the defaults above).
        log_tail_chars: how much of each rank's output to put into an error message.

    Raises:
        DistLaunchError: a rank raised or died, or the timeout passed.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    name = _target_name(target)
    tmp = Path(tempfile.mkdtemp(prefix="dist_launch_"))
    store = host_rendezvous(world_size, timeout_s)  # the launcher process hosts the rendezvous store
    spec = {"target": name, "args": tuple(args), "kwargs": dict(kwargs or {}), "backend": backend,
            "num_threads": num_threads, "timeout_s": timeout_s, "port": store.port}
    with open(tmp / _SPEC_FILE, "wb") as f:
        pickle.dump(spec, f)
    rank_vars = dict(rank_env(os.environ, world_size, threads=num_threads), MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(store.port))
    rank_vars.update(env or {})

    ranks = LocalRanks([], [])
    start = time.monotonic()
    try:
        ranks = LocalRanks.start(lambda r: [sys.executable, "-m", "tests.dist.launcher", str(tmp), str(r)],
                                 world_size, rank_vars, tmp, cwd=REPO_ROOT)
        outcome = ranks.supervise(timeout_s, grace_s)
        ranks.kill()  # survivors of a failure, after their grace period
        return _results(ranks, outcome, tmp, name, start, timeout_s, log_tail_chars)
    finally:
        ranks.kill()
        del store
        for p in sorted(tmp.iterdir(), reverse=True):
            p.unlink(missing_ok=True)
        tmp.rmdir()


def _results(ranks: LocalRanks, outcome: Supervision, tmp: Path, name: str, start: float, timeout_s: float,
             tail_chars: int) -> list[Any]:
    world_size = len(ranks.procs)
    if outcome.timed_out:
        raise DistLaunchError(
            f"{name} on {world_size} ranks timed out after {timeout_s:.0f} s; ranks {outcome.stuck} had not "
            f"finished (hung collective or deadlock?) and all ranks were killed ({outcome.where}). Their "
            f"Python stacks at the timeout are in the logs below." + _logs(ranks, tail_chars)
        )
    failed = any(p.returncode not in (None, 0) for p in ranks.procs)
    problems, values = [], []
    for rank, proc in enumerate(ranks.procs):
        result = _read_result(tmp / f"rank{rank}.result")
        code = proc.poll()
        if result is None:
            how = (f"killed after another rank failed (exit {code})" if code in (-9, -15) and failed
                   else f"died without a result (exit code {code})")
            problems.append(f"rank {rank}: {how}")
        elif result[0] == "error":
            problems.append(f"rank {rank} raised:\n{result[1]}")
        else:
            values.append(result[1])
    if problems:
        raise DistLaunchError(
            f"{name} failed on {world_size} ranks after {time.monotonic() - start:.1f} s:\n"
            + "\n".join(problems) + _logs(ranks, tail_chars)
        )
    return values


def _logs(ranks: LocalRanks, tail_chars: int) -> str:
    return "".join(f"\n--- rank {r} output (tail) ---\n{_tail(log, tail_chars)}" for r, log in enumerate(ranks.logs))


def _worker_main(tmp: str, rank: int) -> int:
    """Entry point of one rank (``python -m tests.dist.launcher TMPDIR RANK``)."""
    arm(rank)  # the launcher's timeout asks for this rank's stacks before killing it
    tmp_path = Path(tmp)
    result_path = tmp_path / f"rank{rank}.result"
    with open(tmp_path / _SPEC_FILE, "rb") as f:
        spec = pickle.load(f)
    initialised = ok = False
    try:
        import importlib

        import torch
        import torch.distributed as dist

        torch.set_num_threads(spec["num_threads"])
        join_rendezvous(spec["port"], rank, int(os.environ["WORLD_SIZE"]), spec["backend"], spec["timeout_s"])
        initialised = True
        mark(f"running {spec['target']}")
        module_name, fn_name = spec["target"].split(":", 1)
        fn = getattr(importlib.import_module(module_name), fn_name)
        payload = pickle.dumps(("ok", fn(*spec["args"], **spec["kwargs"])))
        ok = True
        mark("target returned")
    except BaseException:  # noqa: BLE001 - everything is reported to the launcher
        payload = pickle.dumps(("error", traceback.format_exc()))
    # Report first: tearing the group down must not be able to lose (or delay) the result.
    partial = result_path.with_suffix(".partial")
    partial.write_bytes(payload)
    partial.rename(result_path)  # atomic: the launcher never reads half a result
    if initialised:
        try:
            torch.distributed.destroy_process_group()
        except Exception:  # noqa: BLE001 - teardown errors must not hide the result
            pass
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1], int(sys.argv[2])))
