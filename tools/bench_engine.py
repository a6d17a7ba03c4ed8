"""Benchmark the policy engine: policy-update throughput and peak memory per rank for several layouts.

CPU (always): a small random Qwen2 model (default 4 layers, hidden 256, vocab 8192) at TP1, TP2, PP2 and
TP2 x PP2, each layout in fresh gloo processes sharing the machine's cores (threads per rank = cores /
ranks, so every layout uses the same CPU budget). Per layout:

  * train tok/s      - prompt + response tokens of the mini-batch / wall time of ``train_step`` (forward,
                       backward, DP/TP/PP communication, optimizer step), median over ``--iters``;
  * logprob tok/s    - the same for the forward-only ``compute_logprobs`` (old log-probs);
  * peak RSS / rank  - ``VmHWM`` of each rank process at the end (max over ranks; all ranks listed).

GPU (when CUDA is present): model FLOPs utilisation (MFU) of ``train_step`` for a Qwen2.5-1.5B-shaped
random model on one GPU in BF16 and FP8 (Transformer Engine), with
``FLOPs = tokens * (6 * N_body + 12 * layers * hidden * seq_len) + response_tokens * 6 * vocab * hidden``
(N_body = the transformer layers' parameters; the output layer runs at response positions only,
engine/output_rows.py, and the input embedding is a lookup) and the GPU's dense BF16 peak (``--peak-tflops`` overrides; FP8 MFU is quoted against the BF16 peak too).

Usage::

    .venv/bin/python tools/bench_engine.py                    # the documented CPU table
    .venv/bin/python tools/bench_engine.py --layouts tp1,tp2 --iters 5 --samples 64
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from rank_runner import env_rendezvous, run_rank_processes  # noqa: E402  (tools/rank_runner.py)

LAYOUTS = {
    "tp1": {"tp": 1, "pp": 1}, "tp2": {"tp": 2, "pp": 1}, "pp2": {"tp": 1, "pp": 2}, "tp2pp2": {"tp": 2, "pp": 2},
}
GPU_PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0}
QWEN25_15B = {"num_layers": 28, "hidden_size": 1536, "num_heads": 12, "num_kv_heads": 2, "ffn": 8960,
              "vocab_size": 151936}


def _make_model(out: Path, shape: dict, dtype: str) -> str:
    import torch

    from dcpo_mcore.hf.tiny import make_tiny_hf_model

    make_tiny_hf_model("qwen2", out, seed=0, dtype=getattr(torch, dtype), **shape)
    return str(out)


def _launch(spec: dict, world: int, timeout_s: float) -> list[dict]:
    """Run ``world`` worker processes of this script and return each rank's JSON result."""
    env = env_rendezvous(dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"])))
    return run_rank_processes(lambda rank, out: [sys.executable, __file__, "--worker", json.dumps(spec),
                                                 "--out", str(out)],
                              world, env, timeout_s, f"bench_engine_{spec['name']}")


def _samples(n: int, vocab: int, seed: int, prompt: tuple[int, int], response: tuple[int, int]):
    """The same lengths every step (so tokens/step is fixed), fresh token ids and advantages per ``seed``."""
    import torch

    from dcpo_mcore.engine.batching import PolicySample

    lens = torch.Generator().manual_seed(0)
    g = torch.Generator().manual_seed(1000 + seed)
    out = []
    for _ in range(n):
        p = int(torch.randint(prompt[0], prompt[1] + 1, (1,), generator=lens))
        r = int(torch.randint(response[0], response[1] + 1, (1,), generator=lens))
        out.append(PolicySample(torch.randint(0, vocab, (p,), generator=g).tolist(),
                                torch.randint(0, vocab, (r,), generator=g).tolist(),
                                float(torch.randn((), generator=g))))
    return out


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn, sync):
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def worker(spec: dict) -> dict:
    """One rank: build the engine, warm up, time ``iters`` compute_logprobs + train_step pairs."""
    import torch
    import torch.distributed as dist

    from dcpo_mcore.algo import DcpoClipParams, LossSpec
    from dcpo_mcore.engine.batching import BatchSettings
    from dcpo_mcore.engine.layout import ParallelLayout, Precision
    from dcpo_mcore.engine.optimizer import OptimSettings
    from dcpo_mcore.engine.policy import EngineSettings, PolicyEngine

    torch.set_num_threads(spec["threads"])
    cuda = torch.cuda.is_available()
    precision = Precision(params_dtype=getattr(torch, spec["dtype"]), fp8=spec.get("fp8"),
                          fp8_recipe=spec.get("fp8_recipe", "delayed"))
    settings = EngineSettings(
        layout=ParallelLayout(tp=spec["tp"], pp=spec["pp"], sequence_parallel=spec["tp"] > 1 and cuda,
                              use_distributed_optimizer=True),
        precision=precision, optim=OptimSettings(lr=1e-6),
        batching=BatchSettings(packed=spec["packed"], micro_batch_size=spec["micro_batch_size"],
                               pad_to_multiple=16 if spec.get("fp8") else 1))
    engine = PolicyEngine.from_hf(spec["hf_dir"], settings, LossSpec("dcpo", DcpoClipParams(), "otm"))
    sync = torch.cuda.synchronize if cuda else dist.barrier
    lp_times, train_times = [], []
    for it in range(spec["warmup"] + spec["iters"]):
        batch = _samples(spec["samples"], spec["vocab"], it, tuple(spec["prompt"]), tuple(spec["response"]))
        t_lp, old = _timed(lambda: engine.compute_logprobs(batch), sync)
        for s, lp in zip(batch, old.logprobs):
            s.old_logprobs = lp
        t_train, metrics = _timed(lambda: engine.train_step(batch, group_size=4), sync)
        if it >= spec["warmup"]:
            lp_times.append(t_lp)
            train_times.append(t_train)
    tokens = sum(s.length for s in batch)  # the same every step (see _samples)
    return {"tokens_per_step": tokens, "response_tokens": sum(len(s.response_ids) for s in batch), "lp_s": statistics.median(lp_times), "train_s": statistics.median(train_times),
            "peak_rss_mb": _peak_rss_mb(), "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            "loss_finite": metrics["loss/total"] == metrics["loss/total"]}


def _cpu_rows(args, hf_dir: str, vocab: int) -> list[str]:
    cores = os.cpu_count() or 1
    rows = []
    for name in args.layouts.split(","):
        lay = LAYOUTS[name]
        world = lay["tp"] * lay["pp"]
        spec = {"name": name, **lay, "hf_dir": hf_dir, "vocab": vocab, "dtype": "float32", "packed": args.packed,
                "micro_batch_size": args.micro_batch_size, "samples": args.samples, "prompt": args.prompt,
                "response": args.response, "warmup": args.warmup, "iters": args.iters,
                "threads": max(1, cores // world)}
        res = _launch(spec, world, args.timeout)
        r0 = res[0]
        rss = [r["peak_rss_mb"] for r in res]
        rows.append(f"| {name} | {world} | {spec['threads']} | {r0['tokens_per_step']} | {r0['train_s']:.2f} | "
                    f"{r0['tokens_per_step'] / r0['train_s']:.0f} | {r0['tokens_per_step'] / r0['lp_s']:.0f} | "
                    f"{max(rss):.0f} | {', '.join(f'{x:.0f}' for x in rss)} |")
        print(rows[-1], flush=True)
    return rows


def _step_flops(shape: dict, tokens: int, response_tokens: int, seq_len: float) -> float:
    """Model FLOPs of one train step (forward + backward), counting only the work the engine does."""
    h, L, f, v = shape["hidden_size"], shape["num_layers"], shape["ffn"], shape["vocab_size"]
    kv = h // shape["num_heads"] * shape["num_kv_heads"]
    per_layer = h * h * 2 + 2 * h * kv + 3 * h * f  # q, o, k, v, gate/up/down
    body = 6 * L * per_layer + 12 * L * h * seq_len
    return tokens * body + response_tokens * 6 * v * h  # logits at response positions only


def _gpu_rows(args) -> list[str]:
    import torch

    name = torch.cuda.get_device_name()
    peak = args.peak_tflops or next((v for k, v in GPU_PEAK_BF16_TFLOPS.items() if k in name), None)
    hf_dir = _make_model(Path(tempfile.mkdtemp(prefix="bench_1p5b_")), QWEN25_15B, "bfloat16")
    rows = []
    for label, extra in (("bf16", {}), ("fp8 (hybrid, delayed)", {"fp8": "hybrid", "fp8_recipe": "delayed"})):
        spec = {"name": label, "tp": 1, "pp": 1, "hf_dir": hf_dir, "vocab": QWEN25_15B["vocab_size"],
                "dtype": "bfloat16", "packed": True, "micro_batch_size": args.gpu_micro_batch_size,
                "samples": args.gpu_samples, "prompt": [256, 512], "response": [512, 1536],
                "warmup": 2, "iters": args.iters, "threads": 4, **extra}
        r = _launch(spec, 1, args.timeout)[0]
        seq = r["tokens_per_step"] / args.gpu_samples
        tps = r["tokens_per_step"] / r["train_s"]
        flops = _step_flops(QWEN25_15B, r["tokens_per_step"], r["response_tokens"], seq)
        mfu = flops / r["train_s"] / (peak * 1e12) if peak else float("nan")
        rows.append(f"| {name} | {label} | {r['tokens_per_step']} | {r['train_s']:.2f} | {tps:.0f} | "
                    f"{100 * mfu:.1f}% | {r['gpu_peak_mb'] / 1024:.1f} |")
        print(rows[-1], flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--layouts", default="tp1,tp2,pp2,tp2pp2")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--samples", type=int, default=32, help="responses per optimizer step")
    p.add_argument("--prompt", type=int, nargs=2, default=[32, 64], help="prompt length range")
    p.add_argument("--response", type=int, nargs=2, default=[32, 96], help="response length range")
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("--packed", action="store_true", help="packed rows instead of padded ones")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--peak-tflops", type=float, default=None, help="GPU dense BF16 peak for MFU")
    p.add_argument("--gpu-samples", type=int, default=64)
    p.add_argument("--gpu-micro-batch-size", type=int, default=4)
    args = p.parse_args(argv)
    if args.worker:
        result = worker(json.loads(args.worker))
        import torch.distributed as dist

        Path(args.out).write_text(json.dumps(result))
        if dist.is_initialized():
            dist.destroy_process_group()
        return

    import torch

    print(f"# bench_engine: {os.cpu_count()} CPU cores, torch {torch.__version__}", flush=True)
    shape = {"num_layers": args.layers, "hidden_size": args.hidden, "num_heads": 8, "num_kv_heads": 4,
             "ffn": 4 * args.hidden, "vocab_size": args.vocab}
    hf_dir = _make_model(Path(tempfile.mkdtemp(prefix="bench_tiny_")), shape, "float32")
    print(f"\nCPU, float32, Qwen2-shaped {shape}, {args.samples} samples/step, prompt {args.prompt}, "
          f"response {args.response}, micro-batch size {args.micro_batch_size}, "
          f"{'packed' if args.packed else 'padded'}, distributed optimizer\n")
    print("| layout | ranks | threads/rank | tokens/step | train step s | train tok/s | logprob tok/s | "
          "peak RSS/rank MB (max) | per rank |")
    print("|---|---|---|---|---|---|---|---|---|")
    _cpu_rows(args, hf_dir, args.vocab)
    if torch.cuda.is_available():
        print("\nGPU, Qwen2.5-1.5B shape (random weights), TP1, packed\n")
        print("| GPU | precision | tokens/step | train step s | train tok/s | MFU | peak GPU mem GiB |")
        print("|---|---|---|---|---|---|---|")
        _gpu_rows(args)


if __name__ == "__main__":
    main()
