"""Process-group setup for the policy: torch.distributed, megatron parallel_state, CPU compat, seeds."""
from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel

from .cpu_compat import apply_cpu_compat
from .layout import ParallelLayout
from dcpo_mcore.errors import UserValueError

log = logging.getLogger(__name__)


def init_distributed(timeout_s: float = 600.0) -> None:
    """Join the default group from torchrun/srun-style env vars (RANK, WORLD_SIZE, MASTER_ADDR/PORT)."""
    if dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))


def init_model_parallel(layout: ParallelLayout, seed: int) -> None:
    """Megatron parallel state plus both seeds (docs/platform.md [cpu-megatron-rules]: torch AND
    the model-parallel tracker).

    On a CPU-only machine the compatibility layer is installed first, before any model is built.
    """
    apply_cpu_compat()
    init_distributed()
    world = dist.get_world_size()
    if world % (layout.tp * layout.pp):
        raise UserValueError(f"world size {world} is not divisible by TP*PP = {layout.tp}*{layout.pp}")
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        virtual_pipeline_model_parallel_size=layout.vpp,
    )
    _log_layout(layout, world)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def _log_layout(layout: ParallelLayout, world: int) -> None:
    """One line on rank 0 saying which hosts the ranks run on: on a cluster it shows that a run spans
    the nodes it was given (a collective: every rank calls it)."""
    hosts: list = [None] * world
    dist.all_gather_object(hosts, socket.gethostname())
    if dist.get_rank() == 0:
        names = list(dict.fromkeys(hosts))
        log.info("world %d rank(s) on %d host(s) (%s): TP%d PP%d DP%d", world, len(names), ", ".join(names),
                 layout.tp, layout.pp, world // (layout.tp * layout.pp))
