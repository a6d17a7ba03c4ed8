"""One rank of a conversion: ``python -m dcpo_mcore.convert.worker JOB.json RANK`` (see :mod:`.spawn`).

A job is plain JSON, so the parent and the ranks share no Python state::

    {"config": HF config dir, "tp": 2, "pp": 2, "vpp": null, "dtype": "bfloat16", "progress": true,
     "steps": [{"op": "import", "hf": DIR, "ckpt": DIR},                     HF -> megatron checkpoint
               {"op": "export", "ckpt": DIR, "out": DIR, "max_shard_bytes": N}, checkpoint -> HF files
               {"op": "logprobs", "ckpt": DIR, "input_ids": [[...]], "out": FILE}],
     "store_port": P, "world_size": N, "job_dir": DIR, "timeout_s": T}

Steps run in order in the same processes (a --verify round trip costs no second start-up). Each step
builds its own model and drops it afterwards, so at most one model copy is alive per rank.

A failing rank writes ``rank{R}.err`` (JSON: exit code and one-line message) into ``job_dir`` and exits
with that code; the full traceback of an unexpected error goes to its log. Top-level imports are
stdlib only: dist_checkpointing's save starts a ``spawn`` helper process that re-imports this module.
"""
from __future__ import annotations

import gc
import json
import os
import sys
import traceback
from pathlib import Path

from dcpo_mcore.rank_diagnostics import arm, mark

EXIT_INTERNAL = 3


def run_steps(job: dict) -> None:
    """Run every step of ``job`` on this rank (torch.distributed already initialised)."""
    import torch

    from dcpo_mcore.engine.hf_arch import ArchSpec
    from dcpo_mcore.engine.layout import ParallelLayout
    from dcpo_mcore.engine.parallel import init_model_parallel

    layout = ParallelLayout(tp=job["tp"], pp=job["pp"], vpp=job.get("vpp"))
    init_model_parallel(layout, seed=job.get("seed", 0))
    arch = ArchSpec.from_hf_config(job["config"])
    dtype = getattr(torch, job["dtype"])
    for step in job["steps"]:
        mark(f"step {step['op']} started")
        _STEPS[step["op"]](arch, layout, dtype, step, job.get("progress", False))
        mark(f"step {step['op']} done")
        gc.collect()


def _import(arch, layout, dtype, step, progress) -> None:
    import torch.distributed as dist

    from .hf_io import HfWeights
    from .progress import Progress, say
    from .rank_ops import Model, load_from_hf, save_checkpoint
    from .stages import hf_names_read_by

    show = progress and dist.get_rank() == 0
    model = Model(arch, layout, dtype)
    with HfWeights(step["hf"]) as weights:
        # Rank 0 reads its own stage's tensors only; the bar counts what it reads.
        names = hf_names_read_by(arch, [model.stage(v) for v in range(len(model.chunks))],
                                 model.num_stages)
        bar = Progress("read HF (rank 0)", len(names), enabled=show)

        def get(name):
            t = weights.get(name)
            bar.update(name, t.numel() * t.element_size())
            return t

        load_from_hf(model, get)
    dist.barrier()
    say(f"saving torch_dist checkpoint at {_fmt(layout)} ...", show)
    save_checkpoint(model, step["ckpt"])
    say("checkpoint saved", show)


def _export(arch, layout, dtype, step, progress) -> None:
    import torch.distributed as dist

    from dcpo_mcore.engine.hf_mapping import expected_hf_shapes

    from .hf_io import SafetensorsStreamWriter
    from .progress import Progress, say
    from .rank_ops import Model, export_to_sink, load_checkpoint

    rank0 = dist.get_rank() == 0
    model = Model(arch, layout, dtype)
    say(f"loading checkpoint {step['ckpt']} at {_fmt(layout)} ...", progress and rank0)
    load_checkpoint(model, step["ckpt"])
    sink = None
    if rank0:
        Path(step["out"]).mkdir(parents=True, exist_ok=True)
        shapes = expected_hf_shapes(arch)
        writer = SafetensorsStreamWriter(Path(step["out"]), shapes, dtype, step["max_shard_bytes"])
        bar = Progress("write HF", len(shapes), enabled=progress)

        def sink(name, tensor):
            writer.write(name, tensor)
            bar.update(name, tensor.numel() * tensor.element_size())
    try:
        export_to_sink(model, sink)
    finally:
        if rank0:
            writer.abort()
    if rank0:
        writer.finish()


def _logprobs(arch, layout, dtype, step, progress) -> None:
    import torch
    import torch.distributed as dist

    from .progress import say
    from .rank_ops import Model, forward_logprobs, load_checkpoint

    # Always float32: the check compares against HF in float32, at a 1e-4 scale bf16 could not meet.
    model = Model(arch, layout, torch.float32)
    load_checkpoint(model, step["ckpt"])
    say("megatron forward for the log-prob check ...", progress and dist.get_rank() == 0)
    lp = forward_logprobs(model, torch.tensor(step["input_ids"], dtype=torch.long))
    if lp is not None:
        torch.save(lp, step["out"])
    dist.barrier()


def _fmt(layout) -> str:
    return f"TP{layout.tp} PP{layout.pp}" + (f" VPP{layout.vpp}" if layout.vpp else "")


_STEPS = {"import": _import, "export": _export, "logprobs": _logprobs}


# ---------------------------------------------------------------------------------------------
# process entry


def classify(exc: BaseException) -> tuple[int, str]:
    """(exit code, one-line message) for an exception raised in a rank."""
    from dcpo_mcore.engine.hf_arch import ArchError
    from dcpo_mcore.engine.hf_mapping import MappingError

    from dcpo_mcore.errors import one_line

    from .errors import ConvertError, VerifyError

    if isinstance(exc, (ConvertError, VerifyError)):
        return exc.exit_code, one_line(exc, None)
    if isinstance(exc, (ArchError, MappingError)):
        return ConvertError.exit_code, one_line(exc, None)
    return EXIT_INTERNAL, one_line(exc, None, typed=True)


def _init_process_group(job: dict, rank: int) -> None:
    import torch

    from dcpo_mcore.local_ranks import join_rendezvous

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    join_rendezvous(job["store_port"], rank, job["world_size"], backend, job.get("pg_timeout_s", 1800))


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    rank = int(argv[1])
    arm(rank)  # a supervisor that gives up on a hung job gets this rank's stacks in its log
    err_file = Path(job["job_dir"]) / f"rank{rank}.err"
    try:
        import warnings

        warnings.filterwarnings("ignore")  # megatron's TE/apex notices; they go to the log anyway
        _init_process_group(job, rank)
        run_steps(job)
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
        return 0
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
        traceback.print_exc()
        code, msg = classify(exc)
        tmp = err_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"code": code, "message": msg}))
        tmp.rename(err_file)
        return code


if __name__ == "__main__":
    _code = main(sys.argv[1:])
    if _code:
        # A failed rank may have peers blocked in a collective: skip interpreter teardown, where
        # gloo threads can hang; the parent kills this rank's process group (helpers included) anyway.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_code)
    sys.exit(0)
