"""Run a conversion job on TP*PP ranks: spawn them locally, or join an existing launcher.

* Launched by ``torchrun`` / ``srun`` / ``mpirun`` wrappers (``RANK`` and ``WORLD_SIZE`` are set): every
  process runs the job itself over ``env://`` and rank 0 is the coordinator that finishes the output
  (all ranks must see the same filesystem).
* Otherwise (the usual ``dcpo-convert`` call) this process is the coordinator and starts the ranks as
  fresh ``python -m dcpo_mcore.convert.worker`` interpreters over gloo (CPU) or nccl (GPU, one per
  device). Never as forks of this process: it is multi-threaded from ``import torch`` on (and the
  rendezvous store adds a server thread), and a child forked from a multi-threaded process can inherit
  a lock some other thread held -- the 4-rank conversion that hung in CI with four empty logs. It
  hosts the rendezvous ``TCPStore`` on a port the OS picked (no free-port race), lets rank 0 print
  progress on this terminal, sends everything else from the ranks to per-rank logs, and turns the first
  failure into one exception: when one rank fails the others, typically blocked in a collective, get
  ``grace_s`` to report and are then killed (each rank's whole process group, helpers included).
  A job past its timeout first gets SIGUSR1, on which every rank writes all its threads' Python
  stacks to its log (:mod:`dcpo_mcore.rank_diagnostics`), so a hang says where it was.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from dcpo_mcore.rank_diagnostics import dump_stacks, last_line

from .errors import ConvertError, RankCrash, VerifyError

_PKG_ROOT = Path(__file__).resolve().parents[2]


def launched_externally() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_coordinator() -> bool:
    """True in the process that prepares and finishes the output (rank 0 under an external launcher)."""
    return not launched_externally() or int(os.environ["RANK"]) == 0


def run_job(job: dict, world_size: int, *, timeout_s: float | None = None, grace_s: float = 5.0) -> None:
    """Run ``job`` (see :mod:`.worker`) on ``world_size`` ranks; raise the first rank's error."""
    if launched_externally():
        _run_in_this_process(job, world_size)
    else:
        _spawn(job, world_size, timeout_s, grace_s)


def _run_in_this_process(job: dict, world_size: int) -> None:
    import torch.distributed as dist

    from dcpo_mcore.engine.parallel import init_distributed

    from .worker import classify, run_steps

    import warnings

    warnings.filterwarnings("ignore")  # megatron's TE/apex notices: stderr is for our one-line error
    init_distributed(timeout_s=job.get("pg_timeout_s", 1800))
    if dist.get_world_size() != world_size:
        raise ConvertError(f"launched with WORLD_SIZE={dist.get_world_size()} but TP*PP = {world_size}; "
                           f"start exactly {world_size} processes")
    dist.barrier()  # rank 0 has prepared the output directories
    try:
        run_steps(job)
    except Exception as exc:  # noqa: BLE001 - re-raised as one of our one-line errors
        code, msg = classify(exc)
        raise {2: ConvertError, 1: VerifyError}.get(code, RankCrash)(msg) from exc
    dist.barrier()


def _worker_env(world_size: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(_PKG_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["PYTHONUNBUFFERED"] = "1"
    if "OMP_NUM_THREADS" not in env:  # share the cores instead of oversubscribing them world_size times
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // world_size))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    return env


def _spawn(job: dict, world: int, timeout_s: float | None, grace_s: float) -> None:
    import torch
    import torch.distributed as dist

    on_gpu = torch.cuda.is_available()
    if on_gpu and world > torch.cuda.device_count():
        raise ConvertError(f"TP*PP = {world} ranks need {world} GPUs, this node has "
                           f"{torch.cuda.device_count()}; use a smaller layout or run under torchrun/srun")
    job_dir = Path(tempfile.mkdtemp(prefix="dcpo-convert-"))
    store = dist.TCPStore("127.0.0.1", 0, world + 1, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=job.get("pg_timeout_s", 1800)))
    job = dict(job, store_port=store.port, world_size=world, job_dir=str(job_dir))
    job_file = job_dir / "job.json"
    job_file.write_text(json.dumps(job))
    env = _worker_env(world)
    procs: list = []
    try:
        for r in range(world):
            log = job_dir / f"rank{r}.log"
            with open(log, "wb") as f:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "dcpo_mcore.convert.worker", str(job_file), str(r)], env=env,
                    stdout=None if r == 0 else f, stderr=f, start_new_session=True))
        exit_order = _supervise(procs, timeout_s, grace_s, job_dir)
    finally:
        for p in procs:
            _kill_group(p)
        del store
    _raise_first_failure(procs, exit_order, job_dir)
    shutil.rmtree(job_dir, ignore_errors=True)


def _supervise(procs, timeout_s, grace_s, job_dir: Path) -> list[int]:
    """Wait for all ranks; returns rank indices in the order they exited."""
    deadline = time.monotonic() + timeout_s if timeout_s else None
    order: list[int] = []
    failed_at = None
    while len(order) < len(procs):
        for r, p in enumerate(procs):
            if r not in order and p.poll() is not None:
                order.append(r)
                if p.returncode != 0 and failed_at is None:
                    failed_at = time.monotonic()
        now = time.monotonic()
        if failed_at is not None and now - failed_at > grace_s:
            return order  # the survivors are stuck waiting for the dead rank; the caller kills them
        if deadline is not None and now > deadline:
            stuck = [r for r in range(len(procs)) if r not in order]
            dump_stacks([procs[r].pid for r in stuck])
            for p in procs:
                _kill_group(p)
            where = "; ".join(last_line(job_dir / f"rank{r}.log", r) for r in stuck)
            raise RankCrash(f"conversion timed out after {timeout_s:g} s with ranks {stuck} still running "
                            f"({where}; logs with their stacks kept in {job_dir})")
        time.sleep(0.05)
    return order


def _raise_first_failure(procs, order: list[int], job_dir: Path) -> None:
    failures = []
    for r in order:
        if procs[r].returncode == 0:
            continue
        err = job_dir / f"rank{r}.err"
        if err.is_file():
            info = json.loads(err.read_text())
            failures.append((r, info["code"], info["message"]))
        else:
            failures.append((r, RankCrash.exit_code, f"rank {r} died with exit code {procs[r].returncode}"))
    if not failures and len(order) == len(procs):
        return
    if not failures:
        raise RankCrash(f"ranks did not finish (logs kept in {job_dir})")
    # A rank's own problem (bad input, failed check) explains the others' broken-connection errors.
    known = [f for f in failures if f[1] in (ConvertError.exit_code, VerifyError.exit_code)]
    r, code, msg = (known or failures)[0]
    if code == ConvertError.exit_code:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise ConvertError(msg)
    if code == VerifyError.exit_code:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise VerifyError(msg)
    raise RankCrash(f"rank {r} failed: {msg} (full log: {job_dir / f'rank{r}.log'})")


def _kill_group(p) -> None:
    # Each rank leads its own process group (start_new_session), which also holds the helper processes
    # dist_checkpointing starts, so a failed or finished rank leaves nothing behind.
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
