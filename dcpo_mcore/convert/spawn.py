"""Run a conversion job on TP*PP ranks: spawn them locally, or join an existing launcher.

* Launched by ``torchrun`` / ``srun`` / ``mpirun`` wrappers (``RANK`` and ``WORLD_SIZE`` are set): every
  process runs the job itself over ``env://`` and rank 0 is the coordinator that finishes the output
  (all ranks must see the same filesystem).
* Otherwise (the usual ``dcpo-convert`` call) this process is the coordinator and starts the ranks as
  fresh ``python -m dcpo_mcore.convert.worker`` interpreters over gloo (CPU) or nccl (GPU, one per
  device), supervised by :mod:`dcpo_mcore.local_ranks` (why fresh interpreters, the held rendezvous
  port and the stack dump of a hung rank: docs/architecture.md [conv-fresh-ranks]). Rank 0 prints
  progress on this terminal; everything else goes to per-rank logs, and the first failure becomes one
  exception.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from dcpo_mcore.local_ranks import LocalRanks, host_rendezvous, rank_env

from .errors import ConvertError, RankCrash, VerifyError


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


def _spawn(job: dict, world: int, timeout_s: float | None, grace_s: float) -> None:
    import torch

    on_gpu = torch.cuda.is_available()
    if on_gpu and world > torch.cuda.device_count():
        raise ConvertError(f"TP*PP = {world} ranks need {world} GPUs, this node has "
                           f"{torch.cuda.device_count()}; use a smaller layout or run under torchrun/srun")
    job_dir = Path(tempfile.mkdtemp(prefix="dcpo-convert-"))
    store = host_rendezvous(world, job.get("pg_timeout_s", 1800))
    job = dict(job, store_port=store.port, world_size=world, job_dir=str(job_dir))
    job_file = job_dir / "job.json"
    job_file.write_text(json.dumps(job))
    ranks = LocalRanks([], [])
    try:
        ranks = LocalRanks.start(lambda r: [sys.executable, "-m", "dcpo_mcore.convert.worker", str(job_file), str(r)],
                                 world, rank_env(os.environ, world), job_dir, rank0_stdout_to_terminal=True)
        outcome = ranks.supervise(timeout_s, grace_s)
    finally:
        ranks.kill()
        del store
    if outcome.timed_out:
        raise RankCrash(f"conversion timed out after {timeout_s:g} s with ranks {outcome.stuck} still running "
                        f"({outcome.where}; logs with their stacks kept in {job_dir})")
    _raise_first_failure(ranks.procs, outcome.exit_order, job_dir)
    shutil.rmtree(job_dir, ignore_errors=True)


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
