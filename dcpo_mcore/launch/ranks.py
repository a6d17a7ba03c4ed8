"""Start the trainer ranks of one node inside a Slurm task.

    python -m dcpo_mcore.launch.ranks torchrun --nproc-per-node 8 --master-addr n1 --master-port 27088 \
        --module dcpo_mcore.cli -- --config CONFIG key=value ...
    python -m dcpo_mcore.launch.ranks tasks ...   (same options; one Slurm task per rank, no torchrun)

``torchrun``: one task per node; node rank = ``SLURM_PROCID``, nodes = ``SLURM_NTASKS`` (static rendezvous at
MASTER_ADDR:MASTER_PORT, no restarts). The torchrun agent ignores SIGUSR1 (its default action would kill the
agent and strand the ranks); the ranks inherit "ignored" until the trainer installs its own SIGUSR1 handler,
and Slurm delivers the signal to every process of the step, so each rank gets it.

``tasks``: RANK/LOCAL_RANK/WORLD_SIZE/LOCAL_WORLD_SIZE from SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS/
SLURM_NTASKS_PER_NODE, then exec ``python -m MODULE ARGS``; SIGUSR1 goes straight to the trainer.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys


def _int_env(env, name: str, default: int) -> int:
    value = env.get(name, "")
    return int(value) if value.strip().isdigit() else default


def torchrun_argv(args: argparse.Namespace, env) -> list[str]:
    nnodes = _int_env(env, "SLURM_NTASKS", 1)
    node_rank = _int_env(env, "SLURM_PROCID", 0)
    return ["--nnodes", str(nnodes), "--node-rank", str(node_rank), "--nproc-per-node", str(args.nproc_per_node),
            "--master-addr", args.master_addr, "--master-port", str(args.master_port), "--max-restarts", "0",
            "--module", args.module, *args.rest]


def task_env(args: argparse.Namespace, env) -> dict[str, str]:
    out = dict(env)
    out.update(RANK=str(_int_env(env, "SLURM_PROCID", 0)), LOCAL_RANK=str(_int_env(env, "SLURM_LOCALID", 0)),
               WORLD_SIZE=str(_int_env(env, "SLURM_NTASKS", 1)),
               LOCAL_WORLD_SIZE=str(_int_env(env, "SLURM_NTASKS_PER_NODE", args.nproc_per_node)),
               MASTER_ADDR=args.master_addr, MASTER_PORT=str(args.master_port))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dcpo_mcore.launch.ranks")
    ap.add_argument("how", choices=["torchrun", "tasks"])
    ap.add_argument("--nproc-per-node", type=int, required=True)
    ap.add_argument("--master-addr", required=True)
    ap.add_argument("--master-port", type=int, required=True)
    ap.add_argument("--cuda-visible-devices", default="")
    ap.add_argument("--module", default="dcpo_mcore.cli", help="python module of the trainer (python -m MODULE)")
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        ap.error("put -- before the trainer's arguments, e.g. ... --module dcpo_mcore.cli -- --config X.yaml")
    cut = argv.index("--")
    args = ap.parse_args(argv[:cut])
    args.rest = argv[cut + 1:]
    if args.cuda_visible_devices:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.cuda_visible_devices
    if args.how == "tasks":
        cmd = [sys.executable, "-m", args.module, *args.rest]
        print(f"[ranks] exec {shlex.join(cmd)}", file=sys.stderr, flush=True)
        os.execve(cmd[0], cmd, task_env(args, os.environ))
    # "ignored" survives the exec: the torchrun agent ignores SIGUSR1, and so do the ranks until the
    # trainer installs its handler. (torchrun's module is run, not imported: no torch.distributed here.)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_argv(args, os.environ)]
    print(f"[ranks] exec {shlex.join(cmd)}", file=sys.stderr, flush=True)
    os.execv(cmd[0], cmd)
    return 1  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
