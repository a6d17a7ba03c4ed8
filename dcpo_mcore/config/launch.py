"""`launch` section: the Slurm layout of a recipe (nodes, GPUs per node, how the GPUs are split).

It sits in the recipe next to the parallel layout it must fit, so one file says everything about a
run and the launchers and the memory planner read the same values. Null (the default) means: one
colocated node with the GPUs Slurm gave the job (docs/slurm.md).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Section


class LaunchConfig(Section):
    """Where the job runs: node counts, GPUs per node and how they are split (read by the sbatch
    launchers and tools/plan.py; the trainer itself does not use it)."""

    train_nodes: int = Field(1, ge=1, description="Nodes running trainer ranks.")
    rollout_nodes: int = Field(0, ge=0, description="Nodes running only SGLang servers; 0 = colocated "
                               "(servers share the trainer's node).")
    gpus_per_node: int = Field(8, ge=0, description="GPUs per node; 0 = CPU-only (tests).")
    gpu_memory_gib: float = Field(80.0, gt=0, description="Memory of one GPU in GiB (H100 SXM: 80).")
    gpu_name: str = Field("H100-80GB", description="For messages only.")
    colocated_rollout_gpus: int = Field(
        0, ge=0, description="Colocated mode: GPUs of the node given to SGLang (the first ones); the "
        "trainer gets the rest.")
    servers_per_node: int | None = Field(
        None, ge=1, description="SGLang servers per rollout node; default gpus_per_node / "
        "rollout.server_tp_size (colocated: colocated_rollout_gpus / server_tp_size, at least 1).")
    trainer_launcher: Literal["torchrun", "tasks"] = Field(
        "torchrun", description="torchrun: one Slurm task per node running torchrun; tasks: one Slurm "
        "task per rank (RANK from SLURM_PROCID).")
    train_procs_per_node: int | None = Field(
        None, ge=1, description="Trainer ranks per node; default gpus_per_node (minus the SGLang GPUs "
        "when colocated), or TP*PP on a CPU-only node.")
    startup_timeout_s: float = Field(900.0, gt=0, description="Deadline for every server (and the router) "
                                     "to answer its health check.")
    overhead_gib: float = Field(4.0, ge=0, description="Planner: CUDA context, NCCL buffers and allocator "
                                "fragmentation per GPU.")

    @property
    def colocated(self) -> bool:
        return self.rollout_nodes == 0
