"""Benchmark the live weight sync (megatron trainer -> real SGLang server) against raw gloo broadcast.

Per model size (random Qwen2 in float32, made with ``make_tiny_hf_model``), in one run:

  * ONE real SGLang server (CPU engine and flags as ``ServerManager`` launches it, except
    ``--mem-fraction-static``: see ``--server-mem-fraction``) serves the checkpoint;
  * a trainer (``--tp`` gloo ranks, tests/dist/launcher.py) loads the same checkpoint into a forward-only
    ``PolicyEngine`` and scales every weight by 1.25, so the server and the trainer disagree until a sync
    has really happened (``verify`` before the first push shows the gap);
  * ``WeightSync.push``: one warm-up push (it also forms the weight-update group), then ``--repeats``
    timed pushes with ``SyncSettings(verify_every=0, bucket_bytes=--bucket-mb MiB)``, then ``verify()``
    (max |trainer - server| prompt log-prob; float32 rounding is ~1e-6, a wrong tensor gives >= 0.1);
  * baseline, interleaved with the pushes (push i, then raw i, so background load on a shared machine
    hits both alike): trainer rank 0 broadcasts ONE preallocated flat uint8 buffer of exactly the pushed
    byte count to a plain receiver process (this script with ``--receiver``, torch only) that joined a
    group formed the way SGLang forms its weight-update group (TCPStore client + ``PrefixStore(group)`` +
    ``_new_process_group_helper``; the trainer side is ``dcpo_mcore.sync.group.create_trainer_group``);
    the receiver answers each buffer with a 1-byte broadcast, so a raw time is "until the peer has it".
    One warm-up broadcast (before the warm-up push); the receiver reuses one preallocated buffer, so the
    baseline is the pure transport ceiling.

Reported: medians over the repeats. ``sync GB/s`` = pushed bytes / ``sync/seconds`` (the whole push: liveness
probe (``/model_info``), begin, gather + convert + pack + broadcast + server load, end, version), in 10^9 bytes/s (the
``sync/gbps`` metric is gigabits/s); ``raw GB/s`` likewise for the raw broadcast; their ratio is the
sync efficiency (target >= 0.5 on CPU). The per-phase columns are the push's own ``sync/*_seconds``:
the main thread runs gather + convert + pack, then drain; broadcast and server load run in the sender
thread, overlapping them. ``other`` = sync - (gather + convert + pack + drain): the HTTP control calls
(liveness + version probe, begin, end, version) and waits on a full sender queue or a lent bucket buffer.
Below the table: every
repeat's time, peak RSS, and the median latency of each HTTP control call, timed alone afterwards.
``THP_MEM_ALLOC_ENABLE``, ``SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION`` and ``MALLOC_*`` reach the server and
the ranks from the environment and change the numbers; the header prints them when set. The server gets
``THP_MEM_ALLOC_ENABLE=1`` from ``ServerManager`` (CPU) anyway; the trainer ranks get it from this script
unless the environment already sets it (``THP_MEM_ALLOC_ENABLE=0`` measures without), because that is how the
trainer should be started (performance.md "Weight sync"). The load average (1/5/15 min) is printed with the
machine at the start and again with the table.

Every server, rank and receiver process is stopped when the script ends, also on errors, Ctrl-C and
SIGTERM (the server through ``ServerManager``'s shutdown, the ranks and their receiver by the launcher's
process-group kill).

Usage::

    .venv/bin/python tools/bench_sync.py --quick               # one ~20M-parameter model, smoke run
    .venv/bin/python tools/bench_sync.py                       # 100M,250M,500M
    .venv/bin/python tools/bench_sync.py --sizes 100M,250M --tp 2 --bucket-mb 128 --repeats 5
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
VOCAB = 32000
# Qwen2 shapes (GQA, head_dim 64, SwiGLU FFN ~2.7x hidden) sized to ~N parameters at vocab 32000.
SIZES = {
    "20M": {"num_layers": 4, "hidden_size": 256, "num_heads": 4, "num_kv_heads": 2, "ffn": 768},
    "100M": {"num_layers": 8, "hidden_size": 768, "num_heads": 12, "num_kv_heads": 4, "ffn": 2048},
    "250M": {"num_layers": 16, "hidden_size": 1024, "num_heads": 16, "num_kv_heads": 4, "ffn": 2816},
    "500M": {"num_layers": 24, "hidden_size": 1280, "num_heads": 20, "num_kv_heads": 4, "ffn": 3456},
}
QUICK = "20M"
SCALE = 1.25  # the trainer's weights = the server's initial weights x SCALE
ENV_OF_NOTE = ("THP_MEM_ALLOC_ENABLE", "SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION", "OMP_NUM_THREADS")
PHASES = ("gather", "convert", "pack", "broadcast", "server_load", "drain")


def qwen2_params(shape: dict, vocab: int) -> int:
    """Parameters of an untied Qwen2ForCausalLM (q/k/v biases, two norms per layer, final norm)."""
    h, f = shape["hidden_size"], shape["ffn"]
    kv = shape["num_kv_heads"] * (h // shape["num_heads"])
    layer = 2 * h * h + h + 2 * (h * kv + kv) + 3 * h * f + 2 * h
    return shape["num_layers"] * layer + 2 * vocab * h + h


# ----------------------------------------------------------------------------- the plain receiver


def receiver(spec: dict) -> None:
    """``--receiver``: join the trainer's group as rank 1 the way SGLang does, receive ``count`` buffers."""
    import torch
    import torch.distributed as dist
    from torch.distributed.distributed_c10d import Backend, PrefixStore, _new_process_group_helper, _world

    torch.set_num_threads(1)
    timeout = timedelta(seconds=spec["timeout_s"])
    store = dist.TCPStore(spec["address"], spec["port"], 2, is_master=False, timeout=timeout)
    pg, _ = _new_process_group_helper(2, 1, [], Backend("gloo"), PrefixStore(spec["group"], store),
                                      group_name=spec["group"], backend_options=None, timeout=timeout)
    _world.pg_group_ranks[pg] = {0: 0, 1: 1}
    buf = torch.empty(spec["nbytes"], dtype=torch.uint8)
    ack = torch.ones(1, dtype=torch.uint8)
    for _ in range(spec["count"]):
        dist.broadcast(buf, group=pg, group_src=0)
        dist.broadcast(ack, group=pg, group_src=1)
    dist.destroy_process_group(pg)


class _RawLink:
    """Trainer rank 0's end of the baseline: a receiver process and a 2-rank gloo group."""

    def __init__(self, nbytes: int, count: int, timeout_s: float):
        import torch

        from dcpo_mcore.rollout.ports import PORTS
        from dcpo_mcore.sync.group import create_trainer_group

        self.port = PORTS.pick("127.0.0.1")
        spec = {"address": "127.0.0.1", "port": self.port, "group": f"bench_raw_{os.getpid()}", "nbytes": nbytes,
                "count": count, "timeout_s": timeout_s}
        # Same process group as this rank: the launcher's killpg reaches it if anything goes wrong.
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--receiver", json.dumps(spec)],
                                     env=dict(os.environ, OMP_NUM_THREADS="1"))
        self.pg = create_trainer_group("127.0.0.1", self.port, 2, "gloo", spec["group"], timeout_s)
        self.buf = torch.randint(0, 256, (nbytes,), dtype=torch.uint8)
        self.ack = torch.zeros(1, dtype=torch.uint8)

    def once(self) -> float:
        import torch.distributed as dist

        t0 = time.perf_counter()
        dist.broadcast(self.buf, group=self.pg, group_src=0)
        dist.broadcast(self.ack, group=self.pg, group_src=1)
        return time.perf_counter() - t0

    def close(self) -> None:
        from dcpo_mcore.sync.group import destroy_trainer_group

        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        else:
            destroy_trainer_group(self.pg)


# ----------------------------------------------------------------------------- trainer ranks


def _peak_rss_mb(pid: int | str = "self") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def trainer(hf_dir: str, urls: list[str], spec: dict) -> dict:
    """One trainer rank (run by tests/dist/launcher.py): engine, verify, warm-up push, timed pushes
    interleaved with raw broadcasts (rank 0), final verify."""
    import torch
    import torch.distributed as dist

    from dcpo_mcore.engine.layout import ParallelLayout
    from dcpo_mcore.engine.policy import EngineSettings, PolicyEngine
    from dcpo_mcore.sync import SyncSettings, WeightSync

    rank0 = dist.get_rank() == 0
    t0 = time.perf_counter()
    engine = PolicyEngine.from_hf(hf_dir, EngineSettings(layout=ParallelLayout(tp=spec["tp"]), trainable=False))
    with torch.no_grad():  # same factor on every rank: replicated params (norms) stay identical across TP
        for chunk in engine.chunks:
            for p in chunk.parameters():
                p.mul_(SCALE)
    out: dict = {"rank": dist.get_rank(), "engine_s": time.perf_counter() - t0}
    # A huge threshold: verify() returns the number instead of raising; we judge it ourselves.
    settings = SyncSettings(verify_every=0, bucket_bytes=spec["bucket_bytes"], timeout_s=spec["timeout_s"],
                            verify_threshold=1e9)
    sync = WeightSync(engine, urls if rank0 else None, settings)
    raw = None
    try:
        out["diff_before"] = sync.verify()
        # The raw link (a receiver process, a 2-rank group, a buffer of the model's size) is set up and
        # warmed up BEFORE the warm-up push, so that none of its one-time costs lands on a timed push.
        nbytes = _model_bytes(engine)
        if rank0:
            raw = _RawLink(nbytes, spec["repeats"] + 1, spec["timeout_s"])
            out["raw_warmup_s"] = raw.once()
        t0 = time.perf_counter()
        out["warmup"] = sync.push("bench-warmup")
        out["warmup_s"] = time.perf_counter() - t0
        if int(out["warmup"]["sync/bytes"]) != nbytes:
            raise RuntimeError(f"a push sent {out['warmup']['sync/bytes']:.0f} bytes but the model has {nbytes}: "
                               "the raw baseline would not move the same amount")
        pushes, raws = [], []
        for i in range(spec["repeats"]):
            dist.barrier()
            pushes.append(sync.push(f"bench-{i}"))
            dist.barrier()
            if rank0:
                raws.append(raw.once())
        out["pushes"], out["raw_s"] = pushes, raws
        if rank0:
            out["versions"] = [a.weight_version() for a in sync.admins]
            out["control"] = _control_calls(sync.admins[0], f"bench-{spec['repeats'] - 1}", spec["repeats"])
        out["diff_after"] = sync.verify()
    finally:
        sync.close()
        if raw is not None:
            raw.close()
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def _model_bytes(engine) -> int:
    """Bytes of every HF tensor a push sends (weights in the engine's params dtype, no cast on the wire)."""
    import torch

    from dcpo_mcore.engine.hf_mapping import expected_hf_shapes

    size = torch.empty((), dtype=engine.settings.precision.params_dtype).element_size()
    return sum(int(torch.Size(shape).numel()) * size for shape in expected_hf_shapes(engine.arch).values())


def _control_calls(admin, version: str, repeats: int) -> dict[str, float]:
    """Median latency of each HTTP control call a push makes besides the buckets (the same calls, with
    the same arguments, on the idle server after the pushes: a begin/end pair changes nothing)."""
    calls = {"health": admin.health, "model_info": admin.model_info,
             "begin_weight_update": admin.begin_weight_update, "end_weight_update": admin.end_weight_update,
             "update_weight_version": lambda: admin.update_weight_version(version, abort_all_requests=False)}
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for key, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


# ----------------------------------------------------------------------------- parent


def _server_rss_mb(leader_pid: int | None) -> float:
    """Peak RSS summed over the server's process group (tokenizer manager, scheduler, detokenizer)."""
    if leader_pid is None:
        return float("nan")
    total = 0.0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            pgrp = int(stat.rsplit(")", 1)[1].split()[2])
        except (OSError, ValueError, IndexError):
            continue
        if pgrp == leader_pid:
            total += _peak_rss_mb(d.name)
    return total


def run_size(name: str, args) -> dict:
    from dcpo_mcore.hf.tiny import make_tiny_hf_model
    from dcpo_mcore.rollout import LaunchSpec, ServerManager
    from tests.dist.launcher import launch

    shape = SIZES[name]
    work = Path(tempfile.mkdtemp(prefix=f"bench_sync_{name}_"))
    info: dict = {"name": name, "shape": shape, "params": qwen2_params(shape, args.vocab)}
    try:
        t0 = time.perf_counter()
        hf_dir = make_tiny_hf_model("qwen2", work / "model", vocab_size=args.vocab, seed=1, **shape)
        info["make_s"] = time.perf_counter() - t0
        _say(f"[{name}] model ({info['params'] / 1e6:.1f} M params) written in {info['make_s']:.0f} s; "
             "starting SGLang")
        # ServerManager's CPU flags, except a static memory fraction that leaves room for the weights:
        # 0.05 of the machine's memory is below ~1 GB of weights (SGLang refuses to start).
        spec = LaunchSpec(model_path=str(hf_dir), num_servers=1, device="auto", random_seed=0,
                          startup_timeout_s=args.timeout, shutdown_grace_s=10, max_restarts=0,
                          extra_args=["--mem-fraction-static", str(args.server_mem_fraction)])
        t0 = time.perf_counter()
        with ServerManager(spec, work / "run") as servers:
            info["server_s"] = time.perf_counter() - t0
            _say(f"[{name}] SGLang healthy in {info['server_s']:.0f} s at {servers.worker_urls[0]}; "
                 f"trainer on {args.tp} rank(s)")
            tspec = {"tp": args.tp, "bucket_bytes": args.bucket_mb << 20, "repeats": args.repeats,
                     "timeout_s": args.timeout}
            t0 = time.perf_counter()
            res = launch("tools.bench_sync:trainer", world_size=args.tp, args=(str(hf_dir), servers.worker_urls, tspec),
                         timeout_s=args.timeout, num_threads=max(1, (os.cpu_count() or 1) // args.tp))
            info["trainer_s"] = time.perf_counter() - t0
            info["server_peak_rss_mb"] = _server_rss_mb(servers.pids().get("server_0"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info["ranks"] = res
    return info


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _med(values) -> float:
    return statistics.median(values)


def summarize(info: dict) -> dict:
    r0 = info["ranks"][0]
    pushes = r0["pushes"]
    nbytes = pushes[0]["sync/bytes"]
    sync_s = _med([m["sync/seconds"] for m in pushes])
    raw_s = _med(r0["raw_s"])
    row = {"name": info["name"], "params": info["params"], "bytes": nbytes, "buckets": int(pushes[0]["sync/buckets"]),
           "sync_s": sync_s, "sync_gBps": nbytes / sync_s / 1e9, "raw_s": raw_s, "raw_gBps": nbytes / raw_s / 1e9,
           "diff_before": r0["diff_before"], "diff_after": r0["diff_after"],
           "per_repeat_sync": [m["sync/seconds"] for m in pushes], "per_repeat_raw": r0["raw_s"],
           "warmup_s": r0["warmup_s"], "raw_warmup_s": r0["raw_warmup_s"],
           "trainer_rss_mb": [r["peak_rss_mb"] for r in info["ranks"]],
           "server_rss_mb": info.get("server_peak_rss_mb"),
           "versions_ok": r0["versions"] == [f"bench-{len(pushes) - 1}"]}
    row["ratio"] = row["sync_gBps"] / row["raw_gBps"]
    for ph in PHASES:
        row[ph] = _med([m[f"sync/{ph}_seconds"] for m in pushes])
    # The push's main thread runs: prepare (liveness + version probe, begin) -> stream (gather + convert + pack +
    # waits on a full sender queue) -> drain (last buckets on the wire and loaded) -> end + version.
    # broadcast / server load run in the sender thread, overlapping the stream. So "other" = HTTP control
    # calls + queue waits (+ the small collective handshakes).
    main_thread = ("gather", "convert", "pack", "drain")
    row["other"] = _med([m["sync/seconds"] - sum(m[f"sync/{ph}_seconds"] for ph in main_thread) for m in pushes])
    row["control"] = r0["control"]
    return row


def _machine() -> str:
    import torch

    mem = next((int(line.split()[1]) / 2**20 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal:")), float("nan"))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    try:
        import importlib.metadata

        sgl = importlib.metadata.version("sglang")
    except Exception:  # noqa: BLE001
        sgl = "?"
    return (f"{os.cpu_count()} CPU cores ({cpu}), {mem:.0f} GiB RAM, torch {torch.__version__}, sglang {sgl}, "
            f"load average at start {_load()}")


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min)"


def print_table(rows: list[dict], args) -> None:
    print(f"\nfloat32 Qwen2 (vocab {args.vocab}), trainer TP{args.tp}, bucket {args.bucket_mb} MiB, 1 SGLang server "
          f"(CPU, gloo); medians of {args.repeats} pushes / raw broadcasts after one warm-up each; "
          f"GB/s = 10^9 bytes/s; phase columns are seconds per push; load average now {_load()}\n")
    print("| size | params | bytes (MB) | buckets | sync s | sync GB/s | raw bcast s | raw GB/s | sync/raw | "
          "gather | convert | pack | broadcast | server load | drain | other | verify max abs diff (before -> after) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['params'] / 1e6:.1f} M | {r['bytes'] / 1e6:.0f} | {r['buckets']} | "
              f"{r['sync_s']:.2f} | {r['sync_gBps']:.2f} | {r['raw_s']:.2f} | {r['raw_gBps']:.2f} | "
              f"{r['ratio']:.2f} | " + " | ".join(f"{r[ph]:.2f}" for ph in (*PHASES, "other"))
              + f" | {r['diff_before']:.3g} -> {r['diff_after']:.2g} |")
    print()
    for r in rows:
        sync_s = ", ".join(f"{x:.2f}" for x in r["per_repeat_sync"])
        raw_s = ", ".join(f"{x:.2f}" for x in r["per_repeat_raw"])
        print(f"- {r['name']}: sync s per repeat {sync_s} (warm-up push {r['warmup_s']:.2f}); raw s per repeat {raw_s} "
              f"(warm-up {r['raw_warmup_s']:.2f}); peak RSS trainer rank(s) "
              f"{', '.join(f'{x:.0f}' for x in r['trainer_rss_mb'])} MB, server {r['server_rss_mb']:.0f} MB; "
              f"server weight_version after the last push {'ok' if r['versions_ok'] else 'WRONG'}; "
              "HTTP control calls (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in r["control"].items()))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--receiver", help=argparse.SUPPRESS)
    p.add_argument("--sizes", default="100M,250M,500M", help=f"comma-separated, of {', '.join(SIZES)}")
    p.add_argument("--quick", action="store_true", help=f"only the {QUICK} model (smoke run)")
    p.add_argument("--tp", type=int, default=1, help="trainer ranks (tensor parallel)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bucket-mb", type=int, default=512)
    p.add_argument("--vocab", type=int, default=VOCAB)
    p.add_argument("--timeout", type=float, default=900.0, help="per size: server start-up, trainer launch")
    p.add_argument("--server-mem-fraction", type=float, default=0.35,
                   help="SGLang --mem-fraction-static (KV cache stays capped by --max-total-tokens 4096)")
    args = p.parse_args(argv)
    if args.receiver:
        receiver(json.loads(args.receiver))
        return
    sizes = [QUICK] if args.quick else [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        p.error(f"unknown size(s) {unknown}; choose from {', '.join(SIZES)}")

    sys.path.insert(0, str(REPO_ROOT))  # tests.dist.launcher, dcpo_mcore from the checkout
    # The trainer ranks inherit this (torch reads it at a process's first CPU allocation: it cannot be set
    # from inside a rank). An explicit value, e.g. THP_MEM_ALLOC_ENABLE=0, is kept.
    thp_default = "THP_MEM_ALLOC_ENABLE" not in os.environ
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

    def _term(signum, frame):  # SIGTERM -> the same clean-up path as Ctrl-C
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _term)
    t_start = time.perf_counter()
    print("# bench_sync: " + shlex.join([os.path.relpath(sys.executable, Path.cwd())
                                         if sys.executable.startswith(str(Path.cwd())) else sys.executable,
                                         *sys.argv]))
    print(f"# machine: {_machine()}", flush=True)
    env = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k in ENV_OF_NOTE or k.startswith("MALLOC_")]
    if env:  # inherited by the server and the ranks: they change the numbers
        print(f"# environment: {' '.join(env)}" + (" (THP_MEM_ALLOC_ENABLE=1 set by this script for the trainer "
                                                   "ranks; the server gets it from ServerManager)" if thp_default else ""),
              flush=True)
    rows, failed = [], []
    for name in sizes:
        try:
            info = run_size(name, args)
        except Exception as exc:  # noqa: BLE001 - report, go on with the next size
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            failed.append(f"{name}: {type(exc).__name__}: {first}")
            _say(f"[{name}] FAILED: {str(exc)[-4000:]}")
            continue
        rows.append(summarize(info))
        r = rows[-1]
        _say(f"[{name}] sync {r['sync_s']:.2f} s ({r['sync_gBps']:.2f} GB/s), raw {r['raw_s']:.2f} s "
             f"({r['raw_gBps']:.2f} GB/s), ratio {r['ratio']:.2f}, diff {r['diff_after']:.2g}")
    print_table(rows, args)
    for line in failed:
        print(f"- FAILED {line}")
    print(f"\n# wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as exc:  # servers, ranks and receiver are already stopped by the unwinding
        print(f"bench_sync: interrupted ({str(exc) or 'Ctrl-C'}); every server and rank process was stopped",
              file=sys.stderr)
        sys.exit(130)
