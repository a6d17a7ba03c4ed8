"""One GPU acceptance check: everything one GPU can show, as a pass/fail table (docs/gpu.md [gpu-check]).

Run through ``tools/gpu_check.sh`` (it puts the bundled wheels on the path on a bare GPU machine). Each
check runs in fresh processes with its own time limit; one failing check never stops the others, and
the table always prints. Checks:

  engine       bf16 forward, backward and optimizer step of a ~1B-parameter Qwen2 shape (random weights)
               on one GPU, with policy-update tokens/s and MFU against the GPU's dense bf16 peak
  fp8          the same step with Transformer Engine FP8 (hybrid, delayed); skipped without TE
  logprobs     the vocab-parallel log-prob op on the device against a float64 reference, and its peak
               memory against megatron's vocab_parallel_cross_entropy on the same logits
  checkpoint   a distributed-optimizer engine saved with dist_checkpointing and loaded into a fresh one:
               weights bit-exact
  convert      dcpo-convert hf-to-mcore --verify (round trip byte-identical) and check-logprobs
  broadcast    NCCL broadcast between two processes on two GPUs (GB/s); skipped with one GPU, where NCCL
               refuses two ranks on one device

``--dry-run`` runs the same checks at toy sizes on the CPU (gloo), so CI proves the script itself.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path.insert(0, str(TOOLS))
sys.path.insert(0, str(REPO))

from rank_runner import env_rendezvous, run_rank_processes  # noqa: E402  (tools/rank_runner.py)

# ~1.1B parameters with the tied 151,936-row Qwen vocabulary (0.31B of it the embedding).
QWEN2_1B = {"num_layers": 16, "hidden_size": 2048, "num_heads": 16, "num_kv_heads": 2, "ffn": 5632,
            "vocab_size": 151936}
TOY = {"num_layers": 2, "hidden_size": 64, "num_heads": 4, "num_kv_heads": 2, "ffn": 128, "vocab_size": 512}
LOGPROB_TOL = 1e-4  # |ours - float64 reference| for float32 logits


@dataclass
class Row:
    check: str
    status: str  # PASS / FAIL / SKIP
    figure: str
    detail: str = ""


# ------------------------------------------------------------------------------------------ rank side
def _rank_engine(spec: dict) -> dict:
    """One rank of the engine / fp8 check: bench_engine's timed worker on the given shape."""
    from bench_engine import worker

    return worker(spec)


def _rank_logprobs(spec: dict) -> dict:
    import torch
    import torch.distributed as dist

    from dcpo_mcore.engine.parallel import init_distributed
    from dcpo_mcore.ops import vocab_parallel_logprobs

    init_distributed()
    dev = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(spec["tokens"], spec["vocab"], generator=g)).to(dev)
    targets = torch.randint(0, spec["vocab"], (spec["tokens"],), generator=g).to(dev)
    group = dist.new_group([0])
    ref = torch.log_softmax(logits.double(), -1).gather(1, targets[:, None])[:, 0]
    out = {}
    for name in ("ours", "megatron"):
        leaf = logits.clone().requires_grad_(True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        if name == "ours":
            lp = vocab_parallel_logprobs(leaf, targets, tp_group=group)
        else:
            from megatron.core import parallel_state as ps
            from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

            if not ps.model_parallel_is_initialized():
                ps.initialize_model_parallel()
            lp = -vocab_parallel_cross_entropy(leaf[None].clone(), targets[None])[0]
        (-lp.mean()).backward()
        out[f"{name}_max_abs_err"] = float((lp.detach().double() - ref).abs().max())
        out[f"{name}_peak_mib"] = ((torch.cuda.max_memory_allocated() - base) / 2**20) if dev.type == "cuda" else None
    return out


def _rank_checkpoint(spec: dict) -> dict:
    import torch

    from dcpo_mcore.algo import DcpoClipParams, LossSpec
    from dcpo_mcore.engine import dist_ckpt
    from dcpo_mcore.engine.layout import ParallelLayout
    from dcpo_mcore.engine.policy import EngineSettings, PolicyEngine

    settings = EngineSettings(layout=ParallelLayout(use_distributed_optimizer=True))

    def _engine(hf_dir, _cfg):
        return PolicyEngine.from_hf(hf_dir, settings, LossSpec("dcpo", DcpoClipParams(), "otm"))

    cfg = None
    a = _engine(spec["hf_dir"], cfg)
    t0 = time.perf_counter()
    dist_ckpt.save(Path(spec["root"]) / "ckpt", a.chunks, a.optimizer, {"step": 1})
    save_s = time.perf_counter() - t0
    b = _engine(spec["hf_dir"], cfg)
    with torch.no_grad():
        for c in b.chunks:
            for p in c.module.parameters():
                p.add_(1.0)
    t0 = time.perf_counter()
    extra = dist_ckpt.load(Path(spec["root"]) / "ckpt", b.chunks, b.optimizer)
    load_s = time.perf_counter() - t0
    same = all(torch.equal(x, y) for ca, cb in zip(a.chunks, b.chunks)
               for x, y in zip(ca.module.parameters(), cb.module.parameters()))
    return {"same": same and extra == {"step": 1}, "save_s": save_s, "load_s": load_s}


def _rank_broadcast(spec: dict) -> dict:
    import torch
    import torch.distributed as dist

    from dcpo_mcore.engine.parallel import init_distributed

    init_distributed()
    dev = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    buf = torch.empty(spec["bytes"], dtype=torch.uint8, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else dist.barrier
    times = []
    for i in range(spec["iters"] + 1):
        sync()
        t0 = time.perf_counter()
        dist.broadcast(buf, 0)
        sync()
        if i:
            times.append(time.perf_counter() - t0)
    return {"gbps": spec["bytes"] / sorted(times)[len(times) // 2] / 1e9}


RANK_MAINS = {"engine": _rank_engine, "logprobs": _rank_logprobs, "checkpoint": _rank_checkpoint,
              "broadcast": _rank_broadcast}


def _rank_entry(name: str, spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = RANK_MAINS[name](spec)
    Path(out_path).write_text(json.dumps(result))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


# -------------------------------------------------------------------------------------- launcher side
def _ranks(name: str, spec: dict, world: int, timeout_s: float, tmp: Path) -> list[dict]:
    spec_path = tmp / f"{name}.json"
    spec_path.write_text(json.dumps(spec))
    env = env_rendezvous(os.environ)
    return run_rank_processes(lambda r, out: [sys.executable, __file__, "--_rank", name, str(spec_path), str(out)],
                              world, env, timeout_s, f"gpu_check_{name}")


def _engine_spec(shape: dict, hf_dir: str, gpu: bool, **extra) -> dict:
    return {"name": "engine", "tp": 1, "pp": 1, "hf_dir": hf_dir, "vocab": shape["vocab_size"],
            "dtype": "bfloat16" if gpu else "float32", "packed": gpu, "micro_batch_size": 4 if gpu else 2,
            "samples": 32 if gpu else 4, "prompt": [256, 512] if gpu else [4, 8],
            "response": [512, 1024] if gpu else [4, 8], "warmup": 1, "iters": 3 if gpu else 1, "threads": 4,
            **extra}


def check_engine(ctx: dict, fp8: bool = False) -> Row:
    from bench_engine import _step_flops

    label = "fp8" if fp8 else "engine"
    if fp8:
        from dcpo_mcore.engine.model_builder import transformer_engine_available

        usable, why = transformer_engine_available()
        if not usable:
            return Row(label, "SKIP", "-", f"TE not installed or unusable ({why})")
    extra = {"fp8": "hybrid", "fp8_recipe": "delayed"} if fp8 else {}
    spec = _engine_spec(ctx["shape"], ctx["hf_dir"], ctx["gpu"], **extra)
    r = _ranks(label, spec, 1, ctx["timeout"], ctx["tmp"])[0]
    tps = r["tokens_per_step"] / r["train_s"]
    seq = r["tokens_per_step"] / spec["samples"]
    fig = f"{tps:,.0f} train tok/s"
    if ctx["peak_tflops"]:
        flops = _step_flops(ctx["shape"], r["tokens_per_step"], r["response_tokens"], seq)
        mfu = flops / r["train_s"] / (ctx["peak_tflops"] * 1e12)
        fig += f", MFU {100 * mfu:.1f}% of {ctx['peak_tflops']:g} TFLOP/s"
    if r["gpu_peak_mb"]:
        fig += f", peak {r['gpu_peak_mb'] / 1024:.1f} GiB"
    return Row(label, "PASS" if r["loss_finite"] else "FAIL", fig, "" if r["loss_finite"] else "non-finite loss")


def check_logprobs(ctx: dict) -> Row:
    spec = {"tokens": 8192 if ctx["gpu"] else 64, "vocab": ctx["shape"]["vocab_size"]}
    r = _ranks("logprobs", spec, 1, ctx["timeout"], ctx["tmp"])[0]
    ok = r["ours_max_abs_err"] <= LOGPROB_TOL
    fig = f"max abs err {r['ours_max_abs_err']:.1e} (megatron {r['megatron_max_abs_err']:.1e})"
    if r["ours_peak_mib"] is not None:
        fig += f", peak {r['ours_peak_mib']:,.0f} MiB vs megatron {r['megatron_peak_mib']:,.0f} MiB"
    return Row("logprobs", "PASS" if ok else "FAIL", fig, "" if ok else f"above {LOGPROB_TOL:g}")


def check_checkpoint(ctx: dict) -> Row:
    root = ctx["tmp"] / "ckpt_check"
    root.mkdir()
    r = _ranks("checkpoint", {"hf_dir": ctx["hf_dir"], "root": str(root)}, 1, ctx["timeout"], ctx["tmp"])[0]
    return Row("checkpoint", "PASS" if r["same"] else "FAIL", f"save {r['save_s']:.1f} s, load {r['load_s']:.1f} s",
               "" if r["same"] else "weights differ after load")


def check_convert(ctx: dict) -> Row:
    out = ctx["tmp"] / "converted"
    cmd = [sys.executable, "-m", "dcpo_mcore.cli.convert", "hf-to-mcore", "--hf", ctx["hf_dir"], "--out", str(out),
           "--verify", "--check-logprobs", "--quiet"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=ctx["timeout"],
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])))
    last = (p.stderr.strip().splitlines() or ["(no output)"])[-1][:200]
    return Row("convert", "PASS" if p.returncode == 0 else "FAIL", f"{time.perf_counter() - t0:.1f} s",
               "" if p.returncode == 0 else last)


def check_broadcast(ctx: dict) -> Row:
    if ctx["gpu"]:
        import torch

        if torch.cuda.device_count() < 2:
            return Row("broadcast", "SKIP", "-", "one GPU: NCCL refuses two ranks on one device")
    spec = {"bytes": (1 << 30) if ctx["gpu"] else (8 << 20), "iters": 5}
    r = _ranks("broadcast", spec, 2, ctx["timeout"], ctx["tmp"])
    return Row("broadcast", "PASS", f"{r[0]['gbps']:.2f} GB/s ({'nccl' if ctx['gpu'] else 'gloo'})")


# Seconds each check may take on the GPU (the whole run stays under 9 minutes: 8.25 at worst, plus making
# the 1B model); --timeout replaces them all.
BUDGET_S = {"engine": 120, "fp8": 120, "logprobs": 45, "checkpoint": 75, "convert": 90, "broadcast": 45}

CHECKS = {"engine": check_engine, "fp8": lambda ctx: check_engine(ctx, fp8=True), "logprobs": check_logprobs,
          "checkpoint": check_checkpoint, "convert": check_convert, "broadcast": check_broadcast}


def _peak(args, gpu: bool) -> float | None:
    if args.peak_tflops or not gpu:
        return args.peak_tflops
    import torch

    from bench_engine import GPU_PEAK_BF16_TFLOPS

    name = torch.cuda.get_device_name()
    return next((v for k, v in GPU_PEAK_BF16_TFLOPS.items() if k in name), None)


def run(args) -> list[Row]:
    import torch

    from bench_engine import _make_model

    gpu = torch.cuda.is_available() and not args.dry_run
    if not gpu and not args.dry_run:
        raise SystemExit("gpu_check: no CUDA device; use --dry-run to run the checks at toy sizes on the CPU")
    shape = QWEN2_1B if gpu else TOY
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    hf_dir = _make_model(tmp / "model", shape, "bfloat16" if gpu else "float32")
    ctx = {"gpu": gpu, "shape": shape, "hf_dir": hf_dir, "tmp": tmp, "peak_tflops": _peak(args, gpu)}
    where = torch.cuda.get_device_name() if gpu else f"CPU dry run ({os.cpu_count()} cores)"
    print(f"gpu_check: {where}, torch {torch.__version__}, model {shape}", flush=True)
    rows = []
    for name in args.checks.split(","):
        t0 = time.perf_counter()
        ctx["timeout"] = args.timeout or BUDGET_S[name]
        print(f"gpu_check: {name} (at most {ctx['timeout']:g} s) ...", flush=True)
        try:
            row = CHECKS[name](ctx)
        except Exception as exc:  # noqa: BLE001 - one failing check must not hide the others
            row = Row(name, "FAIL", "-", " ".join(str(exc).split())[:300])
        row.detail = (row.detail + f" [{time.perf_counter() - t0:.0f} s]").strip()
        rows.append(row)
        print(f"gpu_check: {name}: {row.status} {row.figure} {row.detail}", flush=True)
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| check | result | figure | detail |", "|---|---|---|---|"]
    lines += [f"| {r.check} | {r.status} | {r.figure} | {r.detail} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--_rank", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU (what CI runs)")
    ap.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated, from {','.join(CHECKS)}")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per check (default: BUDGET_S)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default: by GPU name)")
    args = ap.parse_args(argv)
    if args._rank:
        _rank_entry(*args._rank)
        return 0
    unknown = [c for c in args.checks.split(",") if c not in CHECKS]
    if unknown:
        ap.error(f"unknown check(s) {unknown}; choose from {','.join(CHECKS)}")
    rows = run(args)
    print(f"\ncommand: {' '.join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])}")
    print(table(rows))
    return 0 if all(r.status != "FAIL" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
