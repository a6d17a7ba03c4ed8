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
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Per-algorithm settings the demo task needs (why: see the module docstring).
ALGO_OVERRIDES = {"dapo": ["algo.overlong_buffer_len=0"]}


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
    from dcpo_mcore.demo import experiments
    from dcpo_mcore.demo.run import DemoOptions

    def say(msg: str) -> None:
        print(f"[compare] {msg}", flush=True)

    root = Path(args.root)
    base = [f"seed={args.seed}", f"steps={args.steps}", f"eval_interval={args.eval_interval}",
            "checkpoint.save_interval=0", "checkpoint.resume=never", *args.overrides]
    cfg = load_config(args.config, [*base, f"run_dir={root / 'pretrain'}"])
    pre = experiments.prepare_or_reuse_pretrained(cfg, DemoOptions(), args.reuse, say)

    rows = []
    for algo in args.algos.split(","):
        run_dir = root / algo
        overrides = [*base, *pre.rl_overrides(), f"algo.name={algo}", *ALGO_OVERRIDES.get(algo, []),
                     f"run_dir={run_dir}"]
        if args.reuse and experiments.finished(run_dir, args.steps, load_config(args.config, overrides), say):
            say(f"{algo}: reusing the finished run in {run_dir}")
            rows.append(summarise(algo, run_dir))
            continue
        say(f"{algo}: dcpo-train {' '.join(overrides)}")
        rc = experiments.run_train(args.config, overrides, run_dir, REPO)
        if rc != 0:
            print(f"[compare] {algo} failed with exit code {rc}; see {run_dir}", file=sys.stderr)
            return 1
        rows.append(summarise(algo, run_dir))
    table = format_table(rows, args, pre.result.final_accuracy)
    print(table)
    (root / "compare.md").write_text(table)
    (root / "compare.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def summarise(algo: str, run_dir: Path) -> dict:
    from dcpo_mcore.data import ARITH_DATA_SOURCE
    from dcpo_mcore.demo import experiments
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
            "wall_minutes": None if (wall := experiments.wall_seconds(run_dir)) is None else wall / 60}


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
