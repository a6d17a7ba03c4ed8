"""Launch-only settings: how many nodes, GPUs per node, how the GPUs are split. Not part of TrainConfig.

They live in ``configs/slurm/<recipe>.yaml`` next to the training recipe ``configs/<recipe>.yaml``::

    train_nodes: 2          # nodes running the trainer ranks (TP x PP x DP = train_nodes * gpus_per_node)
    rollout_nodes: 2        # nodes running SGLang servers; 0 = colocated on the trainer node(s)
    gpus_per_node: 8
    gpu_memory_gib: 80      # H100 SXM 80 GB

``find_launch_file`` picks that file for a recipe, so ``tools/plan.py configs/X.yaml`` and the sbatch
scripts agree on the layout without a second argument. (Schema fields that would make this file
unnecessary are listed in docs/slurm.md.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dcpo_mcore.errors import UserError


class LaunchError(UserError, ValueError):
    """A launch setting or a Slurm environment that cannot work; the message is one line with the fix."""


class LaunchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

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


def find_launch_file(config_path: str | Path) -> Path | None:
    """``configs/slurm/<stem>.yaml`` for ``configs/<stem>.yaml``, if it exists."""
    p = Path(config_path)
    candidate = p.parent / "slurm" / p.name
    return candidate if candidate.is_file() else None


def load_launch_settings(path: str | Path | None) -> LaunchSettings:
    """Read a launch YAML (None = all defaults: one colocated node)."""
    if path is None:
        return LaunchSettings()
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise LaunchError(f"{path}: cannot read launch settings: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise LaunchError(f"{path}: YAML syntax error: {exc}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise LaunchError(f"{path}: expected a mapping of launch settings (train_nodes:, ...)")
    try:
        return LaunchSettings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        known = ", ".join(LaunchSettings.model_fields)
        raise LaunchError(f"{path}: {loc}: {first['msg']} (launch settings: {known})") from None
