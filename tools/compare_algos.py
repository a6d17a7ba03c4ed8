"""DCPO vs GRPO vs DAPO (and GSPO on request) on the CPU demo task: same pretrained start, same seed,
same steps and prompts per step; prints one table.

    .venv/bin/python tools/compare_algos.py [--steps 150] [--seed 1] [--algos dcpo,grpo,dapo] [--root runs/compare]

The pretrained start is made once (the demo's stages 1-3), then each algorithm runs as its own
``dcpo-train`` process from that checkpoint. "Same rollout budget" here means the same training steps
and prompts per step; DAPO's dynamic sampling generates more responses than that to fill its batches,
and the table reports every response each method generated, so the extra cost is visible.

DAPO's overlong reward shaping is switched off here (ALGO_OVERRIDES): its 512-token buffer does not fit
the demo's 16-token responses, and any rescaled buffer would change the reward for DAPO alone. Every
method is therefore scored by the same ternary reward, and DAPO keeps clip-higher, dynamic sampling and
the token-mean loss.

Columns: held-out greedy accuracy (SGLang) at the start and the end, mean TCR (token clipping ratio),
mean RUR (non-zero advantage ratio), responses generated, the minutes spent in training steps (sum of
`timing/step_seconds`), and the whole process's wall time when this tool ran it ("-" for a run reused
from before that was recorded).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Per-algorithm settings the demo task needs (why: see the module docstring).
ALGO_OVERRIDES = {"dapo": ["algo.overlong_buffer_len=0"]}
WALL_FILE = "compare_wall.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/demo_cpu.yaml")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--algos", default="dcpo,grpo,dapo")
    p.add_argument("--root", default="runs/compare")
    p.add_argument("--eval-interval", type=int, default=25)
    p.add_argument("--reuse", action="store_true", help="keep ROOT/pretrain and any finished algorithm run in "
                   "ROOT whose settings equal this call's; run only what is missing or different")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = p.parse_args(argv)

    from dcpo_mcore.config import load_config
    from dcpo_mcore.demo.run import DemoOptions, prepare_pretrained
    from dcpo_mcore.world_env import environ_without_world

    root = Path(args.root)
    base = [f"seed={args.seed}", f"steps={args.steps}", f"eval_interval={args.eval_interval}",
            "checkpoint.save_interval=0", "checkpoint.resume=never", *args.overrides]
    cfg = load_config(args.config, [*base, f"run_dir={root / 'pretrain'}"])
    pre = _reuse_pretrained(cfg) if args.reuse else None
    if pre is None:
        pre = prepare_pretrained(cfg, DemoOptions(), lambda m: print(f"[compare] {m}", flush=True))
        (root / "pretrain" / "pretrain_summary.json").write_text(json.dumps({"final_accuracy": pre.result.final_accuracy}))

    rows = []
    for algo in args.algos.split(","):
        run_dir = root / algo
        overrides = [*base, *pre.rl_overrides(), f"algo.name={algo}", *ALGO_OVERRIDES.get(algo, []),
                     f"run_dir={run_dir}"]
        if args.reuse and _finished(run_dir, args.steps, load_config(args.config, overrides)):
            print(f"[compare] {algo}: reusing the finished run in {run_dir}", flush=True)
            rows.append(summarise(algo, run_dir))
            continue
        cmd = [sys.executable, "-m", "dcpo_mcore.cli", "--config", args.config, *overrides]
        print(f"[compare] {algo}: {' '.join(cmd[3:])}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=environ_without_world())
        if proc.returncode != 0:
            print(f"[compare] {algo} failed with exit code {proc.returncode}; see {run_dir}", file=sys.stderr)
            return 1
        (run_dir / WALL_FILE).write_text(json.dumps({"seconds": time.perf_counter() - t0}) + "\n")
        rows.append(summarise(algo, run_dir))
    table = format_table(rows, args, pre.result.final_accuracy)
    print(table)
    (root / "compare.md").write_text(table)
    (root / "compare.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def _reuse_pretrained(cfg):
    """The Pretrained of an earlier call in the same root, if its checkpoint is complete."""
    from dcpo_mcore.demo.run import Pretrained

    run = Path(cfg.run_dir)
    summary = run / "pretrain_summary.json"
    if not (run / "model_pretrained" / "model.safetensors").exists() or not summary.exists():
        return None
    info = json.loads(summary.read_text())
    result = type("Result", (), {"final_accuracy": info["final_accuracy"]})()
    return Pretrained(run / "model_init", run / "model_pretrained", run / "data" / "train.parquet",
                      run / "data" / "eval.parquet", [], [], result)


def _finished(run_dir: Path, steps: int, expected) -> bool:
    """True if run_dir holds a completed run of exactly the config this call would run. A run made with
    other settings (say, before the demo's lr changed) is run again, never silently compared."""
    from dcpo_mcore.config import config_to_dict, load_config
    from dcpo_mcore.metrics import read_metrics

    try:
        done = any(r.get("step") == steps and "clip/token_clip_ratio" in r for r in read_metrics(run_dir))
        recorded = config_to_dict(load_config(run_dir / "config.yaml"))
    except Exception:  # noqa: BLE001 - no or unreadable metrics/config: not finished
        return False
    changed = _differing_keys(recorded, config_to_dict(expected))
    if done and changed:
        print(f"[compare] {run_dir}: settings differ from this call ({', '.join(changed[:5])}); running it again",
              flush=True)
    return done and not changed


def _differing_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _differing_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


def _wall_seconds(run_dir: Path) -> float | None:
    """The whole dcpo-train process's wall time (start-up, server, evals included), when this tool ran it."""
    try:
        return float(json.loads((run_dir / WALL_FILE).read_text())["seconds"])
    except (OSError, ValueError, KeyError):
        return None


def summarise(algo: str, run_dir: Path) -> dict:
    from dcpo_mcore.data import ARITH_DATA_SOURCE
    from dcpo_mcore.eval import dataset_name
    from dcpo_mcore.metrics import held_out_accuracy_series, read_metrics

    rows = read_metrics(run_dir)
    train = [r for r in rows if "clip/token_clip_ratio" in r]
    evals = held_out_accuracy_series(rows, dataset_name(ARITH_DATA_SOURCE))  # the random held-out split

    def mean(key: str) -> float:
        return sum(r[key] for r in train) / len(train)

    return {"algo": algo, "start_acc": evals[0][1], "end_acc": evals[-1][1], "best_acc": max(v for _, v in evals),
            "tcr_mean": mean("clip/token_clip_ratio"), "rur_mean": mean("adv/nonzero_ratio"),
            "responses": sum(r["rollout/generated_responses"] for r in train), "steps": len(train),
            # the training steps alone (rollout, update, sync): comparable whatever else shared the machine
            "step_minutes": sum(r["timing/step_seconds"] for r in train) / 60,
            "wall_minutes": None if (wall := _wall_seconds(run_dir)) is None else wall / 60}


def format_table(rows: list[dict], args, pretrained_acc: float) -> str:
    head = (f"seed {args.seed}, {args.steps} steps, pretrained start {100 * pretrained_acc:.1f}% (engine greedy)\n\n"
            "| algo | held-out start | held-out end | best | mean TCR | mean RUR | responses generated "
            "| minutes in steps | wall minutes |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {r['algo']} | {100 * r['start_acc']:.1f}% | {100 * r['end_acc']:.1f}% | {100 * r['best_acc']:.1f}% | "
        f"{r['tcr_mean']:.5f} | {r['rur_mean']:.3f} | {int(r['responses'])} | {r['step_minutes']:.1f} | "
        f"{'-' if r['wall_minutes'] is None else format(r['wall_minutes'], '.1f')} |\n" for r in rows)


if __name__ == "__main__":
    sys.exit(main())
