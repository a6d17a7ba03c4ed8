"""Rollouts ahead of training, measured: the CPU demo at rollout.max_staleness K = 0, 1, 2 (a benchmark,
not a timed test; docs/performance.md [async-rollout]).

    .venv/bin/python tools/bench_async.py [--root runs/bench_async] [--ks 0,1,2] [--steps 24]
        [--settings shared,pinned] [--reuse] [key=value ...]

Every run has the same pretrained start (the demo's, made once in ROOT/pretrain), seed, steps and prompts;
only K differs. Two settings:

* ``shared``: the demo as it runs, trainer and SGLang server on the same 2 cores;
* ``pinned``: rollout-bound, so the overlap can be seen rather than fought over: the SGLang server is
  started by this tool on core 0 (``os.sched_setaffinity``, inherited by its processes) and the trainer
  attaches to it from core 1 (``taskset -c 1``). The graders run with the trainer.

It prints one table (markdown) and writes ROOT/bench_async.md: seconds per step, overlap ratio, trainer
and rollout idle shares, the orchestration share of the step, TCR, RUR, the log-prob mismatch, and
held-out greedy accuracy at the end, with the wall time it took to get there. Ratios are against K = 0 of
the same setting, in the same call.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/demo_cpu.yaml")
    p.add_argument("--root", default="runs/bench_async")
    p.add_argument("--ks", default="0,1,2")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--eval-interval", type=int, default=12)
    p.add_argument("--settings", default="shared,pinned")
    p.add_argument("--reuse", action="store_true", help="reuse the pretrained start and finished runs in ROOT")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    args.k_list = [int(k) for k in args.ks.split(",")]
    args.setting_list = [s for s in args.settings.split(",") if s]
    bad = set(args.setting_list) - {"shared", "pinned"}
    if bad:
        p.error(f"--settings: unknown {sorted(bad)}; use shared and/or pinned")
    return args


def say(msg: str) -> None:
    print(f"[bench_async] {msg}", flush=True)


def run_overrides(args, pre, k: int, run_dir: Path) -> list[str]:
    return [*args.overrides, "seed=1", f"steps={args.steps}", f"eval_interval={args.eval_interval}",
            "checkpoint.save_interval=0", "checkpoint.resume=never", "logging.log_interval=8",
            *pre.rl_overrides(), f"rollout.max_staleness={k}", f"run_dir={run_dir}"]


def start_pinned_server(pre, root: Path):
    """One SGLang server on core 0 (this process's affinity is put back afterwards)."""
    from dcpo_mcore.rollout import LaunchSpec, ServerManager

    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    try:
        return ServerManager(LaunchSpec(model_path=str(pre.pre_dir), num_servers=1, random_seed=1,
                                        startup_timeout_s=480), root / "pinned_server").start()
    finally:
        os.sched_setaffinity(0, before)


def run_train(cmd_prefix: list[str], args, overrides: list[str]) -> float:
    from dcpo_mcore.world_env import environ_without_world

    cmd = [*cmd_prefix, sys.executable, "-m", "dcpo_mcore.cli", "--config", args.config, *overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=environ_without_world())
    if proc.returncode != 0:
        raise SystemExit(f"bench_async: a run failed with exit code {proc.returncode}: {' '.join(cmd)}")
    return time.perf_counter() - t0


def summarise(run_dir: Path) -> dict:
    from dcpo_mcore.metrics import read_metrics

    rows = [r for r in read_metrics(run_dir) if "timing/step_seconds" in r]
    evals = [r for r in read_metrics(run_dir) if any(k.endswith("/avg@1") for k in r)]

    def mean(key: str) -> float:
        vals = [r[key] for r in rows if key in r]
        return sum(vals) / len(vals) if vals else float("nan")

    step_s = [r["timing/step_seconds"] for r in rows]
    clock, wall_at = 0.0, {}
    for r in rows:
        clock += r["timing/step_seconds"]
        wall_at[r["step"]] = clock
    last = evals[-1] if evals else {}
    acc_key = next((k for k in last if k.endswith("/avg@1") and "balanced" not in k), None)
    total = sum(step_s)
    return {
        "steps": len(rows), "seconds_per_step": total / len(rows),
        "overlap": mean("timing/overlap_ratio"),
        "trainer_idle_share": sum(r["timing/trainer_idle_seconds"] for r in rows) / total,
        "rollout_idle_share": sum(r["timing/rollout_idle_seconds"] for r in rows) / total,
        "orchestration_share": sum(r["timing/orchestration_seconds"] for r in rows) / total,
        "tcr": mean("clip/token_clip_ratio"), "rur": mean("adv/nonzero_ratio"),
        "mismatch": mean("mismatch/logprob_abs_mean"), "staleness": mean("rollout/staleness_mean"),
        "tis_weight": mean("mismatch/tis_weight_mean"),
        "accuracy": last.get(acc_key, float("nan")) if acc_key else float("nan"),
        "accuracy_step": last.get("step"), "accuracy_wall_s": wall_at.get(last.get("step"), 0.0),
        "curve": [(r["step"], wall_at.get(r["step"], 0.0), r.get(acc_key)) for r in evals] if acc_key else [],
    }


def table(results: dict) -> str:
    head = ("| setting | K | s/step | vs K=0 | overlap | trainer idle | rollout idle | orchestration | "
            "staleness | TIS weight | TCR | RUR | mismatch | held-out Avg@1 (step, wall s) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for setting, by_k in results.items():
        base = by_k.get(0, {}).get("seconds_per_step")
        for k, r in sorted(by_k.items()):
            ratio = f"{r['seconds_per_step'] / base:.2f}x" if base else "n/a"
            lines.append(
                f"| {setting} | {k} | {r['seconds_per_step']:.2f} | {ratio} | {r['overlap']:.2f} | "
                f"{r['trainer_idle_share']:.0%} | {r['rollout_idle_share']:.0%} | {r['orchestration_share']:.1%} | "
                f"{r['staleness']:.2f} | {r['tis_weight']:.3f} | {r['tcr']:.4f} | {r['rur']:.3f} | "
                f"{r['mismatch']:.4f} | {r['accuracy']:.3f} ({r['accuracy_step']}, {r['accuracy_wall_s']:.0f}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from dcpo_mcore.config import load_config
    from dcpo_mcore.demo import experiments
    from dcpo_mcore.demo.run import DemoOptions

    root = Path(args.root)
    cfg = load_config(args.config, [*args.overrides, "seed=1", f"run_dir={root / 'pretrain'}"])
    pre = experiments.prepare_or_reuse_pretrained(cfg, DemoOptions(baseline=False), args.reuse, say)
    results: dict[str, dict[int, dict]] = {}
    for setting in args.setting_list:
        server = start_pinned_server(pre, root) if setting == "pinned" else None
        try:
            for k in args.k_list:
                run_dir = root / setting / f"k{k}"
                if not (args.reuse and (run_dir / "bench_done.json").exists()):
                    shutil.rmtree(run_dir, ignore_errors=True)
                    overrides = run_overrides(args, pre, k, run_dir)
                    prefix: list[str] = []
                    if server is not None:
                        overrides += [f"rollout.server_urls=[{server.worker_urls[0]}]", "rollout.num_servers=0"]
                        prefix = ["taskset", "-c", "1"]
                    say(f"{setting} K={k}: {args.steps} steps")
                    wall = run_train(prefix, args, overrides)
                    (run_dir / "bench_done.json").write_text(json.dumps({"wall_seconds": wall}) + "\n")
                results.setdefault(setting, {})[k] = summarise(run_dir)
        finally:
            if server is not None:
                server.shutdown()
    out = table(results)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    curves = {f"{s} K={k}": r["curve"] for s, by_k in results.items() for k, r in by_k.items()}
    text = (f"# rollouts ahead of training: {args.steps} demo steps, seed 1, commit {commit}\n\n"
            f"`{' '.join([sys.executable, *sys.argv])}`\n\n{out}\n\n"
            f"Held-out greedy accuracy curves (step, wall seconds, Avg@1):\n\n```\n{json.dumps(curves, indent=1)}\n```\n")
    (root / "bench_async.md").write_text(text)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
