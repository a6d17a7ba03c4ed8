"""Benchmark: memory and time of a vocab-parallel mean log-prob loss, forward + backward, on CPU/gloo.

Compares, at T tokens, vocab V and tensor-parallel size TP (default 4096, 32768, 2; each rank holds
logits ``[T, V/TP]``):

  (a) all-gather   -- all-gather the full ``[T, V]`` logits, ``torch.log_softmax`` in fp32, gather the
                      targets (the memory pattern of megatron's ``gather_from_tensor_model_parallel_region``,
                      which cannot run on CPU, re-implemented here with ``dist.all_gather``);
  (b) megatron     -- ``megatron.core.tensor_parallel.vocab_parallel_cross_entropy`` (loss = -logprob);
  (c) ours         -- ``dcpo_mcore.ops.vocab_parallel_logprobs`` (default ``inplace_backward=True``);
  (c') ours, out-of-place -- the same with ``inplace_backward=False`` (for reference).

The loss is ``-mean(logprob)`` over all T tokens; one measured step is forward + ``torch.autograd.grad``
of the loss w.r.t. the logits shard (a leaf tensor), so the gradient handed upstream is part of the step.

Peak memory = peak *extra* bytes during one step above what exists once the logits shard (and the
targets) are allocated; the gradient counts when it is a new buffer. Two measurements per variant,
each rank's value, max over ranks:

  * RSS: ``/proc/self/status`` VmHWM after ``echo 5 > /proc/self/clear_refs`` (resets the high-water
    mark to the current RSS, the baseline), with ``MALLOC_MMAP_THRESHOLD_=65536`` so glibc serves every
    allocation >= 64 KiB by a fresh mmap and unmaps it on free (RSS then tracks allocations instead of
    hiding them in a reused heap). One warm-up step runs first, so one-time lazy allocations are excluded.
  * torch allocator: peak of torch.profiler's ``Total Allocated`` memory counter during a step,
    relative to its value before the step (counts tensors only; gloo buffers and Python objects excluded).

Time = median over ``--iters`` steps after ``--warmup`` steps, measured in one more fresh process pair
per dtype (default malloc settings) that runs all variants interleaved round-robin, so that background
load on a shared machine hits every variant alike; ``torch.set_num_threads(1)`` per rank (2 ranks on
2 cores), ranks synchronised with a barrier before each step and the slower rank's time taken.

Memory is measured in a fresh process pair per (dtype, variant).

Usage::

    .venv/bin/python tools/bench_loss.py                      # the documented configuration
    .venv/bin/python tools/bench_loss.py --dtypes bfloat16 --variants b,c --chunk-size 256
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from rank_runner import run_rank_processes  # noqa: E402  (tools/rank_runner.py)
VARIANTS = {
    "a": "(a) all-gather + log_softmax",
    "b": "(b) megatron vocab_parallel_cross_entropy",
    "c": "(c) ours (inplace_backward=True)",
    "c_oop": "(c') ours (inplace_backward=False)",
}


# ----------------------------------------------------------------------------- rank side


def _profiler_peak_bytes(step) -> int:
    from dcpo_mcore.ops.profiling import peak_allocated_bytes

    peak = peak_allocated_bytes(step)
    return -1 if peak is None else peak


def _make_loss_fn(variant: str, tp_group, targets, chunk_size: int):
    import torch
    import torch.distributed as dist

    if variant == "a":
        class _GatherVocab(torch.autograd.Function):
            """All-gather along the vocab dim; backward keeps this rank's slice (as megatron's)."""

            @staticmethod
            def forward(ctx, shard):
                parts = [torch.empty_like(shard) for _ in range(dist.get_world_size(tp_group))]
                dist.all_gather(parts, shard.contiguous(), group=tp_group)
                ctx.rank, ctx.width = dist.get_rank(tp_group), shard.shape[-1]
                return torch.cat(parts, dim=-1)

            @staticmethod
            def backward(ctx, grad_full):
                start = ctx.rank * ctx.width
                return grad_full[:, start:start + ctx.width].contiguous()

        def loss_fn(logits):
            full = _GatherVocab.apply(logits)
            logp = torch.log_softmax(full.float(), dim=-1)
            return -logp.gather(1, targets.unsqueeze(1)).mean()
    elif variant == "b":
        from megatron.core import tensor_parallel

        def loss_fn(logits):
            return tensor_parallel.vocab_parallel_cross_entropy(logits, targets).mean()
    elif variant in ("c", "c_oop"):
        from dcpo_mcore.ops import vocab_parallel_logprobs

        inplace = variant == "c"

        def loss_fn(logits):
            lp = vocab_parallel_logprobs(logits, targets, tp_group=tp_group, chunk_size=chunk_size,
                                         inplace_backward=inplace)
            return -lp.mean()
    else:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
    return loss_fn


def _rank_main(spec: dict) -> dict:
    """One rank. ``mode="memory"``: one variant, peak memory of one step after a warm-up step.
    ``mode="time"``: every variant in ``spec["variants"]``, interleaved round-robin (the order rotates
    each round) so that background load on the machine hits all variants alike."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    from dcpo_mcore.local_ranks import join_rendezvous
    from dcpo_mcore.metrics.phases import read_peak_rss_bytes, read_rss_bytes, reset_peak_rss

    join_rendezvous(spec["port"], rank, world, "gloo", 300)
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(tensor_model_parallel_size=world)
    tp_group = parallel_state.get_tensor_model_parallel_group()

    dtype = getattr(torch, spec["dtype"])
    n_tokens, vocab = spec["tokens"], spec["vocab"]
    v_local = vocab // world
    gen = torch.Generator().manual_seed(1234)
    targets = torch.randint(0, vocab, (n_tokens,), generator=gen)
    pristine = torch.empty(n_tokens, v_local, dtype=dtype).normal_(generator=torch.Generator().manual_seed(rank))
    logits = torch.empty_like(pristine).requires_grad_()
    loss_fns = {v: _make_loss_fn(v, tp_group, targets, spec["chunk_size"]) for v in spec["variants"]}

    def reset():  # in-place variants overwrite the logits; every step starts from the same values
        with torch.no_grad():
            logits.copy_(pristine)

    def step(variant):
        (grad,) = torch.autograd.grad(loss_fns[variant](logits), logits)
        return grad

    out = {"rank": rank}
    if spec["mode"] == "memory":
        (variant,) = spec["variants"]
        reset()
        del_me = step(variant)  # warm-up: lazy one-time allocations
        del del_me
        reset()
        dist.barrier()
        base = read_rss_bytes()
        if base is None or not reset_peak_rss() or read_peak_rss_bytes() > base + (1 << 20):
            raise RuntimeError("could not read VmRSS or reset VmHWM through /proc/self/clear_refs")
        grad = step(variant)
        out["rss_peak_bytes"] = read_peak_rss_bytes() - base
        out["grad_aliases_logits"] = grad.data_ptr() == logits.data_ptr()
        del grad
        reset()
        dist.barrier()
        out["torch_peak_bytes"] = _profiler_peak_bytes(lambda: step(variant))
    else:
        variants = list(spec["variants"])
        times = {v: [] for v in variants}
        for i in range(spec["warmup"] + spec["iters"]):
            for variant in variants[i % len(variants):] + variants[: i % len(variants)]:
                reset()
                dist.barrier()
                t0 = time.perf_counter()
                grad = step(variant)
                elapsed = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
                del grad
                dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the slower rank's time
                if i >= spec["warmup"]:
                    times[variant].append(float(elapsed))
        out["times_s"] = times
    dist.barrier()
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()
    return out


# ----------------------------------------------------------------------------- launcher side


def _run_pair(spec: dict, tp: int, extra_env: dict, timeout_s: float) -> list[dict]:
    """Run ``_rank_main(spec)`` in ``tp`` fresh processes; return their results in rank order."""
    from dcpo_mcore.local_ranks import host_rendezvous

    store = host_rendezvous(tp, timeout_s)
    with tempfile.TemporaryDirectory(prefix="bench_loss_") as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(dict(spec, port=store.port)))
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra_env)
        return run_rank_processes(lambda rank, out: [sys.executable, __file__, "--_rank", str(spec_path), str(out)],
                                  tp, env, timeout_s, "bench_loss")


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f}" if n >= 100 * 2**20 else f"{n / 2**20:,.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated logits dtypes")
    ap.add_argument("--variants", default="a,b,c,c_oop", help=f"comma-separated, from {','.join(VARIANTS)}")
    ap.add_argument("--chunk-size", type=int, default=None,
                    help="chunk_size of (c)/(c'); default: the op's default (dcpo_mcore.ops.default_chunk_size)")
    ap.add_argument("--iters", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per process pair")
    args = ap.parse_args(argv)
    if args.vocab % args.tp:
        ap.error("--vocab must be divisible by --tp")

    import megatron.core
    import torch

    sys.path.insert(0, str(REPO_ROOT))
    from dcpo_mcore.ops import default_chunk_size

    chunk = args.chunk_size or default_chunk_size(args.vocab // args.tp, "cpu")

    command = " ".join([".venv/bin/python", "tools/bench_loss.py"] + [shlex.quote(a) for a in (argv or sys.argv[1:])])
    print(f"command: {command}")
    print(f"torch {torch.__version__}, megatron-core {megatron.core.__version__}, {os.cpu_count()} CPUs, "
          f"T={args.tokens}, V={args.vocab}, TP={args.tp} (shard [{args.tokens}, {args.vocab // args.tp}]), "
          f"chunk_size={chunk}{' (default)' if args.chunk_size is None else ''}, {args.iters} timed steps after {args.warmup} warm-up\n")
    rows = {}
    variants = args.variants.split(",")
    for name in variants:
        if name not in VARIANTS:
            ap.error(f"unknown variant {name!r}; choose from {','.join(VARIANTS)}")
    for dtype in args.dtypes.split(","):
        spec = {"dtype": dtype, "tokens": args.tokens, "vocab": args.vocab, "chunk_size": chunk,
                "warmup": args.warmup, "iters": args.iters}
        for variant in variants:  # memory: a fresh process pair per variant
            mem = _run_pair(dict(spec, mode="memory", variants=[variant]), args.tp,
                            {"MALLOC_MMAP_THRESHOLD_": "65536"}, args.timeout)
            rows[(dtype, variant)] = {"rss": max(r["rss_peak_bytes"] for r in mem),
                                      "torch": max(r["torch_peak_bytes"] for r in mem),
                                      "alias": all(r["grad_aliases_logits"] for r in mem)}
            r = rows[(dtype, variant)]
            print(f"  memory {dtype:8s} {variant:5s}: RSS {_mib(r['rss'])} MiB, torch {_mib(r['torch'])} MiB",
                  file=sys.stderr, flush=True)
        tim = _run_pair(dict(spec, mode="time", variants=variants), args.tp, {}, args.timeout)
        for variant in variants:  # time: one fresh pair per dtype, variants interleaved
            ts = tim[0]["times_s"][variant]
            rows[(dtype, variant)].update(ms=1e3 * statistics.median(ts), ms_min=1e3 * min(ts),
                                          ms_max=1e3 * max(ts))
            print(f"  time   {dtype:8s} {variant:5s}: median {rows[(dtype, variant)]['ms']:.0f} ms "
                  f"({', '.join(f'{1e3 * t:.0f}' for t in ts)})", file=sys.stderr, flush=True)

    shard_mib = {d: args.tokens * (args.vocab // args.tp) * getattr(torch, d).itemsize for d in args.dtypes.split(",")}
    print("Peak extra memory per rank during forward+backward, above the allocated logits shard "
          "(RSS = VmHWM delta with MALLOC_MMAP_THRESHOLD_=65536; torch = torch.profiler allocator peak); "
          "time = median of forward+backward steps, slower rank, all variants interleaved in one process pair per dtype.\n")
    print("| logits dtype | variant | peak extra RSS (MiB) | peak extra torch alloc (MiB) | grad written into logits | time fwd+bwd, median (min-max) ms |")
    print("|---|---|---:|---:|:---:|---:|")
    for (dtype, variant), r in rows.items():
        print(f"| {dtype} (shard {_mib(shard_mib[dtype])} MiB) | {VARIANTS[variant]} | {_mib(r['rss'])} | "
              f"{_mib(r['torch'])} | {'yes' if r['alias'] else 'no'} | {r['ms']:.0f} ({r['ms_min']:.0f}-{r['ms_max']:.0f}) |")
    print()
    for dtype in args.dtypes.split(","):
        b, c = rows.get((dtype, "b")), rows.get((dtype, "c"))
        if not (b and c):
            continue
        mem_ratio = c["rss"] / max(b["rss"], 1)
        torch_ratio = c["torch"] / max(b["torch"], 1)
        time_ratio = c["ms"] / b["ms"]
        print(f"{dtype}: c/b peak memory {mem_ratio:.3f} (RSS: {c['rss']:,} / {b['rss']:,} bytes), "
              f"{torch_ratio:.3f} (torch alloc: {c['torch']:,} / {b['torch']:,} bytes) "
              f"[target <= 0.25: {'met' if max(mem_ratio, torch_ratio) <= 0.25 else 'MISSED'}]; "
              f"c/b time {time_ratio:.2f} [target <= 1.2: {'met' if time_ratio <= 1.2 else 'MISSED'}]")
    return 0


def _rank_entry(spec_path: str, result_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    Path(result_path).write_text(json.dumps(_rank_main(spec)))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--_rank":
        sys.exit(_rank_entry(sys.argv[2], sys.argv[3]))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks that kill the ranks
    sys.exit(main())
