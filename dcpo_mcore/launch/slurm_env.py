"""Resolve a Slurm allocation into everything the sbatch scripts run, printed as shell-safe assignments.

    ENV_SH="$(python -m dcpo_mcore.launch.slurm_env --mode disagg -- "$CONFIG" "$@")" || exit 2
    eval "$ENV_SH"     # every value is shlex-quoted: no user string is ever re-parsed by the shell

The script then only runs the computed command lines (``"${DCPO_TRAIN_CMD[@]}"`` and friends). Run it by
hand with ``--explain`` on any machine (fake the allocation with ``--hostnames`` and ``--job-id``) to see
the resolved node lists, ports and commands.

Layout of a job:

* node list from ``scontrol show hostnames "$SLURM_JOB_NODELIST"``; the first ``train_nodes`` run the
  trainer (rank 0 and ``MASTER_ADDR`` on the first), the next ``rollout_nodes`` run SGLang servers,
  ``servers_per_node`` each, and the router runs on the first rollout node. Colocated: one node does all.
* ports come from the job id, so a requeued job gets the same ones and two jobs on one node differ:
  a block of 32 ports at ``10000 + 32 * (job_id % 700)`` (below the Linux ephemeral range):
  +0 MASTER_PORT, +1 router, +2 router metrics, +4+2i server i's HTTP port, +5+2i its NCCL port.
* one log directory per job: ``$DCPO_LOG_ROOT/<job name>-<job id>`` (default ``logs/slurm``); each
  attempt (``SLURM_RESTART_COUNT``) appends to the same files after a header line.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from .settings import LaunchError, LaunchSettings

PORT_LOW, PORT_BLOCK, PORT_SLOTS = 10000, 32, 700
MAX_SERVERS_PER_NODE = (PORT_BLOCK - 4) // 2


def port_block(job_id: int) -> int:
    """First port of this job's block; deterministic in the job id (same after a requeue)."""
    return PORT_LOW + PORT_BLOCK * (job_id % PORT_SLOTS)


def expand_hostnames(nodelist: str) -> list[str]:
    """``scontrol show hostnames NODELIST`` (no shell involved)."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise LaunchError(f"cannot expand SLURM_JOB_NODELIST={nodelist!r} with scontrol: {exc}") from None
    hosts = out.split()
    if not hosts:
        raise LaunchError(f"scontrol show hostnames {nodelist!r} returned no hosts")
    return hosts


@dataclass
class JobPlan:
    """Everything a launcher runs; shell variables by :func:`to_shell`."""

    job_id: int
    restart: int
    mode: str
    log_dir: Path
    run_dir: Path
    train_hosts: list[str]
    rollout_hosts: list[str]
    master_addr: str
    master_port: int
    server_urls: list[str]
    router_url: str | None
    attach_urls: list[str]  # what the trainer attaches to (the router, or the one server)
    startup_timeout_s: float
    srun_server: list[str] = field(default_factory=list)
    server_cmd: list[str] = field(default_factory=list)
    srun_router: list[str] = field(default_factory=list)
    router_cmd: list[str] = field(default_factory=list)
    srun_train: list[str] = field(default_factory=list)
    train_cmd: list[str] = field(default_factory=list)
    preempt_marker: Path = Path()


def _gpu_env_lists(launch: LaunchSettings, env: Mapping[str, str]) -> tuple[str, str]:
    """Colocated: (CUDA_VISIBLE_DEVICES for SGLang, for the trainer), as ordinals of the job's GPUs."""
    if launch.gpus_per_node == 0:
        return "", ""
    visible = [g for g in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if g] or \
        [str(i) for i in range(launch.gpus_per_node)]
    k = launch.colocated_rollout_gpus
    return ",".join(visible[:k]), ",".join(visible[k:])


def default_launch(cfg, env: Mapping[str, str]) -> LaunchSettings:
    """No ``launch:`` section: one colocated node with the GPUs Slurm gave the job (none = CPU-only),
    ``rollout.num_servers * rollout.server_tp_size`` of them for SGLang."""
    gpus = int(env.get("SLURM_GPUS_ON_NODE", "0") or 0)
    rollout_gpus = min(gpus - 1, max(1, cfg.rollout.num_servers) * cfg.rollout.server_tp_size) if gpus > 1 else 0
    return LaunchSettings(train_nodes=1, rollout_nodes=0, gpus_per_node=gpus, colocated_rollout_gpus=rollout_gpus,
                          startup_timeout_s=float(env.get("DCPO_STARTUP_TIMEOUT_S", 900)))


def resolve(config: str, overrides: Sequence[str], *, mode: str, env: Mapping[str, str],
            hostnames: Sequence[str] | None = None, python: str = sys.executable) -> JobPlan:
    """The job plan for ``config`` + ``overrides`` in the allocation described by ``env`` (SLURM_*)."""
    from dcpo_mcore.config import ConfigError, load_config

    from .plan import make_plan, servers_per_node, train_procs_per_node

    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        raise LaunchError(str(exc)) from None
    launch = cfg.launch or default_launch(cfg, env)
    if mode == "colocated" and not launch.colocated:  # a disagg recipe squeezed onto one node
        launch = launch.model_copy(update={"rollout_nodes": 0, "train_nodes": 1})
    if mode == "disagg" and launch.colocated:
        raise LaunchError(f"--mode disagg needs launch.rollout_nodes >= 1 in {config} (got "
                          f"{'no launch section' if cfg.launch is None else launch.rollout_nodes}); use "
                          "slurm/dcpo_colocated.sbatch or set launch.rollout_nodes")
    plan = make_plan(cfg, launch)
    if plan.problems:
        raise LaunchError(plan.problems[0])
    if cfg.rollout.server_urls:
        raise LaunchError("rollout.server_urls is set, but the Slurm launchers start their own servers; unset it "
                          "(or run dcpo-train directly to attach to servers elsewhere)")

    job_id = int(env.get("SLURM_JOB_ID", "0") or 0)
    hosts = list(hostnames) if hostnames is not None else expand_hostnames(env["SLURM_JOB_NODELIST"])
    need = launch.train_nodes + launch.rollout_nodes
    if len(hosts) < need:
        raise LaunchError(f"the job has {len(hosts)} node(s) ({', '.join(hosts)}) but the launch settings need "
                          f"train_nodes {launch.train_nodes} + rollout_nodes {launch.rollout_nodes} = {need}; "
                          f"submit with sbatch -N {need}")
    train_hosts = hosts[:launch.train_nodes]
    rollout_hosts = hosts[launch.train_nodes:need] if mode == "disagg" else train_hosts[:1]
    base = port_block(job_id)
    per_node = servers_per_node(cfg, launch) if (launch.gpus_per_node or not launch.colocated) else \
        max(1, cfg.rollout.num_servers)
    if per_node > MAX_SERVERS_PER_NODE:
        raise LaunchError(f"{per_node} servers per node exceed the {MAX_SERVERS_PER_NODE} of a job's port block")
    local = mode == "colocated"
    url_host = (lambda h: "127.0.0.1") if local else (lambda h: h)
    server_urls = [f"http://{url_host(h)}:{base + 4 + 2 * i}" for h in rollout_hosts for i in range(per_node)]
    use_router = len(server_urls) > 1
    router_url = f"http://{url_host(rollout_hosts[0])}:{base + 1}" if use_router else None
    attach = [router_url] if router_url else server_urls

    log_root = Path(env.get("DCPO_LOG_ROOT", "logs/slurm"))
    job_name = env.get("SLURM_JOB_NAME", "dcpo")
    run_dir = Path(cfg.run_dir)
    jp = JobPlan(job_id=job_id, restart=int(env.get("SLURM_RESTART_COUNT", "0") or 0), mode=mode,
                 log_dir=log_root / f"{job_name}-{job_id}", run_dir=run_dir, train_hosts=train_hosts,
                 rollout_hosts=rollout_hosts, master_addr="127.0.0.1" if local else train_hosts[0],
                 master_port=base, server_urls=server_urls, router_url=router_url, attach_urls=attach,
                 startup_timeout_s=launch.startup_timeout_s, preempt_marker=run_dir / "PREEMPTED")

    # --- commands. Every step: one srun, --overlap in colocated mode (steps share the node; GPUs are split
    # through CUDA_VISIBLE_DEVICES), --exact nodes in disagg mode.
    cfg_args = ["--config", config, *overrides]
    bind = "127.0.0.1" if local else "0.0.0.0"
    server_gpus, train_gpus = _gpu_env_lists(launch, env) if local else ("", "")
    jp.srun_server = ["--nodes", str(len(rollout_hosts)), "--ntasks", str(len(rollout_hosts) * per_node),
                      "--ntasks-per-node", str(per_node), "--nodelist", ",".join(rollout_hosts),
                      "--job-name", "sglang", "--kill-on-bad-exit=1"]
    jp.server_cmd = [python, "-m", "dcpo_mcore.launch.serve", "server", "--host", bind,
                     "--port-base", str(base + 4), *(["--cuda-visible-devices", server_gpus] if server_gpus else []),
                     *cfg_args]
    if router_url:
        jp.srun_router = ["--nodes", "1", "--ntasks", "1", "--nodelist", rollout_hosts[0], "--job-name", "router"]
        jp.router_cmd = [python, "-m", "dcpo_mcore.launch.serve", "router", "--host", bind, "--port", str(base + 1),
                         "--metrics-port", str(base + 2), "--worker-urls", *server_urls]
    procs = train_procs_per_node(cfg, launch)
    entry = env.get("DCPO_TRAIN_MODULE", "dcpo_mcore.cli")
    train_overrides = [*overrides, f"rollout.server_urls=[{','.join(attach)}]", "rollout.num_servers=0",
                       "rollout.use_router=false"]
    ranks = [python, "-m", "dcpo_mcore.launch.ranks", launch.trainer_launcher, "--nproc-per-node", str(procs),
             "--master-addr", jp.master_addr, "--master-port", str(base),
             *(["--cuda-visible-devices", train_gpus] if train_gpus else []), "--module", entry, "--"]
    jp.train_cmd = [*ranks, "--config", config, *train_overrides]
    tasks_per_node = procs if launch.trainer_launcher == "tasks" else 1
    jp.srun_train = ["--nodes", str(len(train_hosts)), "--ntasks", str(len(train_hosts) * tasks_per_node),
                     "--ntasks-per-node", str(tasks_per_node), "--nodelist", ",".join(train_hosts),
                     "--job-name", "trainer"]
    for opts, per in ((jp.srun_server, per_node), (jp.srun_router, None), (jp.srun_train, tasks_per_node)):
        if opts:
            opts[:0] = ["--overlap"] if local else _disagg_step_resources(launch, env, per)
    return jp


def _disagg_step_resources(launch, env: Mapping[str, str], tasks_per_node: int | None) -> list[str]:
    """Resource options of one step on nodes of its own (docs/gpu.md [slurm-gpu]). The server and
    trainer steps take their nodes' GPUs, all their CPUs shared out between the step's tasks (an
    ``--exact`` step otherwise gets one CPU per task) and all their memory. The router needs no GPU: it
    shares the first rollout node with the server step (``--overlap``) and asks for no GRES, so it never
    waits for GPUs that step holds. On CPU nodes (``gpus_per_node: 0``) it asks for nothing: a cluster
    without GresTypes refuses ``--gres=none`` ("Invalid Trackable RESource specification"), as the
    namespace cluster showed (docs/slurm.md [netns-cluster])."""
    if tasks_per_node is None:
        return ["--overlap", "--gres=none"] if launch.gpus_per_node else ["--overlap"]
    opts = ["--exact", "--mem=0"]
    if launch.gpus_per_node:
        opts.append(f"--gpus-per-node={launch.gpus_per_node}")
    cpus = str(env.get("SLURM_CPUS_ON_NODE", "")).split("(")[0]  # e.g. "64" or "64(x2)" from older Slurm
    if cpus.isdigit():
        opts.append(f"--cpus-per-task={max(1, int(cpus) // tasks_per_node)}")
    return opts


def to_shell(jp: JobPlan) -> str:
    """``NAME=value`` / ``NAME=(a b c)`` lines, every value quoted with shlex.quote."""
    q = shlex.quote
    scalars = {
        "DCPO_JOB_ID": jp.job_id, "DCPO_RESTART": jp.restart, "DCPO_MODE": jp.mode,
        "DCPO_LOG_DIR": jp.log_dir, "DCPO_RUN_DIR": jp.run_dir, "DCPO_PREEMPT_MARKER": jp.preempt_marker,
        "DCPO_MASTER_ADDR": jp.master_addr, "DCPO_MASTER_PORT": jp.master_port,
        "DCPO_ROUTER_URL": jp.router_url or "", "DCPO_STARTUP_TIMEOUT_S": int(jp.startup_timeout_s),
    }
    arrays = {
        "DCPO_TRAIN_HOSTS": jp.train_hosts, "DCPO_ROLLOUT_HOSTS": jp.rollout_hosts,
        "DCPO_SERVER_URLS": jp.server_urls, "DCPO_ATTACH_URLS": jp.attach_urls,
        "DCPO_SRUN_SERVER": jp.srun_server, "DCPO_SERVER_CMD": jp.server_cmd,
        "DCPO_SRUN_ROUTER": jp.srun_router, "DCPO_ROUTER_CMD": jp.router_cmd,
        "DCPO_SRUN_TRAIN": jp.srun_train, "DCPO_TRAIN_CMD": jp.train_cmd,
    }
    lines = [f"{k}={q(str(v))}" for k, v in scalars.items()]
    lines += [f"{k}=({' '.join(q(str(x)) for x in v)})" for k, v in arrays.items()]
    return "\n".join(lines) + "\n"


def explain(jp: JobPlan) -> str:
    def cmd(srun, c):
        return "srun " + " ".join(shlex.quote(x) for x in [*srun, *c]) if c else "(none)"
    return "\n".join([
        f"job {jp.job_id} (attempt {jp.restart}), mode {jp.mode}, logs in {jp.log_dir}, run dir {jp.run_dir}",
        f"trainer nodes: {', '.join(jp.train_hosts)}; MASTER_ADDR={jp.master_addr} MASTER_PORT={jp.master_port}",
        f"rollout nodes: {', '.join(jp.rollout_hosts)}; servers: {', '.join(jp.server_urls)}",
        f"router: {jp.router_url or 'none (one server)'}; the trainer attaches to {', '.join(jp.attach_urls)}",
        f"servers: {cmd(jp.srun_server, jp.server_cmd)}",
        f"router:  {cmd(jp.srun_router, jp.router_cmd)}",
        f"trainer: {cmd(jp.srun_train, jp.train_cmd)}",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dcpo_mcore.launch.slurm_env",
                                 description="Resolve the Slurm allocation into the launcher's commands.")
    ap.add_argument("--mode", choices=["colocated", "disagg"], required=True)
    ap.add_argument("--hostnames", help="comma-separated node names instead of scontrol (for --explain off Slurm)")
    ap.add_argument("--job-id", help="instead of $SLURM_JOB_ID (for --explain off Slurm)")
    ap.add_argument("--explain", action="store_true", help="print a readable summary instead of shell assignments")
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    env = dict(os.environ)
    if args.job_id:
        env["SLURM_JOB_ID"] = args.job_id
    hosts = args.hostnames.split(",") if args.hostnames else None
    if hosts is None and "SLURM_JOB_NODELIST" not in env:
        print("slurm_env: error: not inside a Slurm job (no SLURM_JOB_NODELIST); pass --hostnames to try it",
              file=sys.stderr)
        return 2
    try:
        jp = resolve(args.config, args.overrides, mode=args.mode, env=env, hostnames=hosts)
    except LaunchError as exc:
        lines = str(exc).splitlines()
        print(f"slurm_env: error: {lines[0]}" + (f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""),
              file=sys.stderr)
        return 2
    print(explain(jp) if args.explain else to_shell(jp), end="\n" if args.explain else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
