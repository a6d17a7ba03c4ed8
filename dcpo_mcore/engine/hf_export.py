"""Stream the full Hugging Face tensors of a (TP x PP x VPP)-sharded megatron model to global rank 0.

Used by checkpoint export (``dcpo-convert mcore-to-hf``) and by the live weight sync to SGLang
(:mod:`dcpo_mcore.sync`), so both move exactly the same tensors in the same order.

Virtual stages: with ``pp`` pipeline ranks and ``vpp`` chunks per rank (interleaved schedule), chunk ``v``
of PP rank ``p`` is stage ``s = v * pp + p`` of ``S = pp * vpp`` equal, contiguous stages -- the way
megatron assigns layers. :mod:`.hf_mapping` only knows "``S`` contiguous stages", so it is called with
``pp_size=S, pp_rank=s``; without VPP, ``S = pp`` and ``s = p``.

Rank 0 walks the mapping's order; for each megatron parameter it takes its own TP shard or receives the
others' point to point (replicated norms: from TP rank 0 only), and :func:`iter_mcore_to_hf` turns the
shards into full HF tensors handed to ``sink(name, tensor)``. Every other rank sends its parameters in
that same order (the plan is a pure function of architecture and layout). Rank 0 therefore holds its
own model slice plus one parameter's shards: no rank ever holds the whole model.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from .hf_arch import ArchSpec
from .hf_mapping import export_plan, iter_mcore_to_hf, virtual_stage

__all__ = ["local_stage_tensors", "stream_hf_tensors"]

Sink = Callable[[str, torch.Tensor], None]


def local_stage_tensors(chunks: Sequence[torch.nn.Module], pp: int, pp_rank: int) -> dict[tuple[int, str], torch.Tensor]:
    """``{(stage, local megatron name): tensor}`` of this rank's chunks (DDP wrappers are looked through;
    ``_extra_state`` entries carry no weights and are left out)."""
    out = {}
    for v, chunk in enumerate(chunks):
        module = getattr(chunk, "module", chunk)
        for name, t in module.state_dict().items():
            if not name.endswith("_extra_state"):
                out[(virtual_stage(v, pp, pp_rank), name)] = t
    return out


def stream_hf_tensors(chunks: Sequence[torch.nn.Module], arch: ArchSpec, te_names: bool, sink: Sink | None, *,
                      timings: dict[str, float] | None = None, on_cpu: bool = True, copy: bool = True) -> None:
    """Collective over the whole default group: rank 0 receives every full HF tensor in ``sink``.

    ``sink`` is only called (and only needed) on global rank 0; it owns the tensors (on the CPU with
    ``on_cpu``, else on the model's device). DP replicas: only the first rank of each (pp, tp)
    coordinate sends. ``timings`` (rank 0) accumulates seconds spent in "gather" (receiving shards)
    and "sink"; the rest of the call is the layout conversion.

    ``copy=False`` is for a sink that copies each tensor before it returns (the weight-sync packer):
    the tensors it gets may then be views of the model's own parameters (TP1 on rank 0: gate/up
    halves, norms, projections) or of received shards, and are not owned by the sink
    (:func:`~.hf_mapping.iter_mcore_to_hf`'s ``copy``). With ``copy=True`` (checkpoint export) the
    contract above holds.
    """
    tp, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    pp, pp_rank = ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank()
    num_stages = pp * len(chunks)
    local = local_stage_tensors(chunks, pp, pp_rank)
    me = dist.get_rank()
    # Who holds what, and in which dtype: the plain-torch norms stay float32 under bf16 params, so the
    # receiver cannot infer a buffer's dtype from the model's params_dtype.
    infos = [None] * dist.get_world_size()
    dist.all_gather_object(infos, ((pp_rank, tp_rank), {k: t.dtype for k, t in local.items()}))
    owner: dict[tuple[int, int], int] = {}
    dtypes: dict[tuple[int, str], torch.dtype] = {}
    for r, (coord, dt) in enumerate(infos):
        if coord not in owner:  # first rank of each (pp, tp): DP replicas stay silent
            owner[coord] = r
            dtypes.update(dt)
    plan = export_plan(arch, tp, num_stages, te_names)
    if me == 0:
        _receive(arch, tp, pp, num_stages, te_names, plan, owner, dtypes, local, sink,
                 {} if timings is None else timings, on_cpu, copy)
    else:
        for s, spec in plan:
            for r in ([0] if spec.tp_dim is None else range(tp)):
                if owner[(s % pp, r)] == me:
                    dist.send(local[(s, spec.name)].contiguous(), dst=0)
    dist.barrier()


def _receive(arch, tp, pp, num_stages, te_names, plan, owner, dtypes, local, sink, timings, on_cpu, copy) -> None:
    device = next(iter(local.values())).device
    steps = iter(plan)
    move = (lambda t: t.cpu()) if on_cpu else (lambda t: t)
    timings.setdefault("gather", 0.0)
    timings.setdefault("sink", 0.0)

    def get_shards(stage: int, name: str) -> list[torch.Tensor]:
        t0 = time.perf_counter()
        try:
            return _shards(stage, name)
        finally:
            timings["gather"] += time.perf_counter() - t0

    def _shards(stage: int, name: str) -> list[torch.Tensor]:
        s, spec = next(steps)
        if (s, spec.name) != (stage, name):  # the senders follow the plan: a divergence would corrupt data
            raise RuntimeError(f"export order mismatch: mapping asked for {(stage, name)}, plan has {(s, spec.name)}")
        shards = []
        for r in ([0] if spec.tp_dim is None else range(tp)):
            src = owner[(s % pp, r)]
            if src == 0:
                shards.append(move(local[(s, name)].detach()))
            else:
                buf = torch.empty(spec.shape, dtype=dtypes[(s, name)], device=device)
                dist.recv(buf, src=src)
                shards.append(move(buf))
        return shards

    for name, tensor in iter_mcore_to_hf(get_shards, arch, tp, num_stages, te_names=te_names, copy=copy):
        if sink is not None:
            t0 = time.perf_counter()
            sink(name, tensor)
            timings["sink"] += time.perf_counter() - t0
