"""Exec one SGLang server or the sglang-router for one Slurm task (``python -m sglang.launch_server`` /
``python -m sglang_router.launch_router`` underneath).

    python -m dcpo_mcore.launch.serve server --host 0.0.0.0 --port-base 27092 --config CONFIG [key=value ...]
    python -m dcpo_mcore.launch.serve router --host 0.0.0.0 --port 27089 --metrics-port 27090 --worker-urls URL...

Server ``i`` of a node (``SLURM_LOCALID``) listens on ``port_base + 2i`` with NCCL port ``port_base + 2i + 1``
and, on a GPU node, uses GPUs ``[i * server_tp_size, (i + 1) * server_tp_size)``. The command line is the
one the in-process ServerManager uses (rollout/server.py ``build_server_command``): the CPU flags and the CPU
compatibility shim on a machine without CUDA, ``rollout.sglang_extra_args`` appended.

SIGUSR1 is set to *ignored* before the exec (and so in every SGLang process): Slurm's preemption warning
(``--signal=USR1@120``) goes to every step of the job, and only the trainer should act on it; the default
action would kill the server.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path


def _exec(cmd: list[str], env: dict[str, str]) -> None:
    print(f"[serve] exec {shlex.join(cmd)}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    os.execve(cmd[0], cmd, env)


def server_command(args: argparse.Namespace, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    from dcpo_mcore.config import ConfigError, load_config
    from dcpo_mcore.rollout.cpu_shim import shim_env
    from dcpo_mcore.rollout.server import LaunchSpec, _cuda_available, build_server_command

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        raise SystemExit(f"serve: config error: {str(exc).splitlines()[0]}")
    if not cfg.model.hf_path:
        raise SystemExit("serve: model.hf_path is not set; SGLang needs a Hugging Face checkpoint directory")
    index = int(env.get("SLURM_LOCALID", "0") or 0)
    port = args.port_base + 2 * index
    if args.cuda_visible_devices:
        env["CUDA_VISIBLE_DEVICES"] = args.cuda_visible_devices
    on_cpu = not _cuda_available()
    spec = LaunchSpec(model_path=cfg.model.hf_path, tp_size=cfg.rollout.server_tp_size, host=args.host,
                      extra_args=cfg.rollout.sglang_extra_args, random_seed=cfg.seed)
    cmd = build_server_command(spec, index, port, port + 1, on_cpu)
    if Path(cfg.model.hf_path).is_dir():
        env.setdefault("HF_HUB_OFFLINE", "1")
    if on_cpu:
        env["SGLANG_USE_CPU_ENGINE"] = "1"
        env = shim_env(env)
    return cmd, env


def router_command(args: argparse.Namespace) -> list[str]:
    from dcpo_mcore.rollout.server import ROUTER_ARGS, SGLANG_ROUTER_MODULE, default_server_python

    return [default_server_python(), "-m", SGLANG_ROUTER_MODULE, "--host", args.host, "--port", str(args.port),
            "--worker-urls", *args.worker_urls, "--request-timeout-secs", str(args.request_timeout_s),
            "--prometheus-host", args.host, "--prometheus-port", str(args.metrics_port), *ROUTER_ARGS]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dcpo_mcore.launch.serve")
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("server", help="one SGLang server (index from SLURM_LOCALID)")
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port-base", type=int, required=True)
    s.add_argument("--cuda-visible-devices", default="")
    s.add_argument("--config", required=True)
    s.add_argument("overrides", nargs="*")
    r = sub.add_parser("router", help="the sglang-router in front of the servers")
    r.add_argument("--host", default="0.0.0.0")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--metrics-port", type=int, required=True)
    r.add_argument("--request-timeout-s", type=int, default=1800)
    r.add_argument("--worker-urls", nargs="+", required=True)
    args = ap.parse_args(argv)
    env = dict(os.environ)
    if args.what == "server":
        cmd, env = server_command(args, env)
    else:
        cmd = router_command(args)
    _exec(cmd, env)
    return 1  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
