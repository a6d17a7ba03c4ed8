"""The DCPO paper's claims measured on our machinery: its methods, the section 5.4 ablations, DPPO, and a
reward-only control, over several seeds, with one verdict per claim (docs/fidelity.md).

    .venv/bin/python tools/reproduce_paper.py [--root runs/paper] [--seeds 1,2,3] [--steps 64] [--prompts 256]
        [--only dcpo,grpo,...] [--reuse] [--dry-run] [--report-only] [key=value ...]

The task is the CPU demo's (docs/demo.md): its tokenizer, tiny model and pretrained start, made once in
ROOT/pretrain and shared by every run. RL draws from a pool of the first --prompts training questions,
so with the demo's 32 prompts per step each prompt is seen prompts_per_step * steps / prompts times (8
at the defaults): smooth advantage standardisation works across visits of a prompt, and over 8,000
prompts it never gets any. Held-out accuracy is measured on the demo's 200-question random split,
greedy (Avg@1) and sampled (Avg@k, --eval-k), every --eval-interval steps.

Every run has the same start, steps, prompts per step, lr, seed set and reward (ternary; docs/algorithm.md
[choice-same-reward]), plus one GRPO run with the +-1 reward. The per-method settings are each method's
defaults; the one change, DAPO's overlong shaping off, is reported in the table (dcpo_mcore/demo/paper.py
RUNS).

One `dcpo-train` process per run, checkpointing every --eval-interval steps. Stopping this tool (Ctrl-C,
kill, a lost session) loses at most that many steps: call it again with --reuse and it skips finished runs
whose settings equal this call's, resumes an unfinished one from its checkpoint, and reruns a run whose
settings changed. Without --reuse it refuses a ROOT that already holds runs. Output: ROOT/fidelity.md and
ROOT/plots/*.png (tools/reproduce_paper.py --report-only rebuilds them from whatever has finished).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SECONDS_PER_STEP_GUESS = 3.6  # docs/demo.md: 3.3 s per demo step on 2 idle cores, plus evaluation
SECONDS_PER_RUN_OVERHEAD = 40.0  # server start, first evaluation, checkpoint writes


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/demo_cpu.yaml")
    p.add_argument("--root", default="runs/paper")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated RL seeds (default 1,2,3)")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--prompts", type=int, default=256, help="training prompts in the RL pool (default 256)")
    p.add_argument("--eval-interval", type=int, default=16)
    p.add_argument("--eval-k", type=int, default=4, help="samples per problem for the sampled Avg@k (default 4)")
    p.add_argument("--only", default=None, help="comma-separated run labels (default: all; see --dry-run)")
    p.add_argument("--reuse", action="store_true", help="keep what ROOT holds: skip finished runs with these "
                   "settings, resume unfinished ones, rerun changed ones")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its time estimate, run nothing")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from finished runs")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = p.parse_args(argv)
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, not {args.seeds!r}")
    for name in ("steps", "prompts", "eval_interval"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.eval_k < 0:
        p.error("--eval-k must be >= 0")
    return args


def say(msg: str) -> None:
    print(f"[paper] {msg}", flush=True)


def run_path(root: Path, label: str, seed: int) -> Path:
    """Where one run of the plan lives."""
    return root / label / f"seed{seed}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from dcpo_mcore.config import load_config
    from dcpo_mcore.demo import paper

    try:
        runs = paper.plan(args.seed_list, args.only.split(",") if args.only else None)
    except ValueError as exc:
        print(f"reproduce_paper: {exc}", file=sys.stderr)
        return 2
    root = Path(args.root)
    demo = load_config(args.config, args.overrides)
    visits = demo.rollout.prompts_per_step * args.steps / args.prompts
    estimate = len(runs) * (args.steps * SECONDS_PER_STEP_GUESS + SECONDS_PER_RUN_OVERHEAD)
    say(f"{len(runs)} runs x {args.steps} steps; {args.prompts} prompts, each seen {visits:.1f} times "
        f"({demo.rollout.prompts_per_step} per step); about {estimate / 3600:.1f} h on 2 idle cores")
    if visits < 8:
        say(f"note: {visits:.1f} visits per prompt is below the 8 this experiment is designed for")
    if args.dry_run:
        for spec, seed in runs:
            print(f"  {spec.label:12s} seed {seed}: {' '.join(spec.overrides)}   ({spec.what})")
        return 0
    if args.report_only:
        return write_report(args, root, runs)
    if not args.reuse and root.exists() and any(root.iterdir()):
        print(f"reproduce_paper: {root} already holds runs; pass --reuse to keep and resume them, or choose "
              "another --root", file=sys.stderr)
        return 2
    pool, pre = prepare(args, root)
    for i, (spec, seed) in enumerate(runs, 1):
        rc = run_one(args, spec, seed, pool, pre, root, f"{i}/{len(runs)}")
        if rc != 0:
            print(f"reproduce_paper: {spec.label} seed {seed} failed with exit code {rc}; see "
                  f"{run_path(root, spec.label, seed) / 'train.log'}. Call again with --reuse to resume.",
                  file=sys.stderr)
            return 1
    return write_report(args, root, runs)


def prepare(args, root: Path):
    """The shared pretrained start (seed 1 of the demo) and the RL prompt pool."""
    from dcpo_mcore.config import load_config
    from dcpo_mcore.demo import experiments
    from dcpo_mcore.demo.run import DemoOptions

    cfg = load_config(args.config, [*args.overrides, "seed=1", f"run_dir={root / 'pretrain'}"])
    pre = experiments.prepare_or_reuse_pretrained(cfg, DemoOptions(baseline=False), args.reuse, say)
    pool = write_prompt_pool(pre.train_file, root / "pretrain" / "data" / f"rl_pool_{args.prompts}.parquet",
                             args.prompts)
    return pool, pre


def write_prompt_pool(train_file: Path, out: Path, n: int) -> Path:
    """The first n rows of the demo's training file (atomic: a stop leaves no partial pool)."""
    import pyarrow.parquet as pq

    table = pq.read_table(train_file)
    if n > table.num_rows:
        raise SystemExit(f"reproduce_paper: --prompts {n} is more than the {table.num_rows} training questions")
    if out.exists() and pq.read_table(out).equals(table.slice(0, n)):
        return out
    tmp = out.with_suffix(".tmp")
    pq.write_table(table.slice(0, n), tmp)
    tmp.replace(out)
    return out


def run_overrides(args, spec, seed: int, pool: Path, pre, run_dir: Path) -> list[str]:
    """Everything one run is made of; the same for every run but the run's own overrides and seed."""
    return [*args.overrides, f"seed={seed}", f"steps={args.steps}", f"eval_interval={args.eval_interval}",
            f"eval_k={args.eval_k}", f"checkpoint.save_interval={args.eval_interval}", "checkpoint.resume=auto",
            "checkpoint.keep_last=1", "logging.log_interval=8", *pre.rl_overrides(),
            f"data.train_files=[{pool}]", f"data.eval_files=[{pre.eval_file}]",
            *spec.overrides, f"run_dir={run_dir}"]


def run_one(args, spec, seed: int, pool: Path, pre, root: Path, position: str) -> int:
    from dcpo_mcore.config import load_config
    from dcpo_mcore.demo import experiments

    run_dir = run_path(root, spec.label, seed)
    overrides = run_overrides(args, spec, seed, pool, pre, run_dir)
    expected = load_config(args.config, overrides)
    if experiments.finished(run_dir, args.steps, expected, say):
        say(f"{position} {spec.label} seed {seed}: finished before, reused")
        return 0
    resumed = run_dir.exists() and experiments.same_settings(run_dir, expected)
    if run_dir.exists() and not resumed:
        say(f"{position} {spec.label} seed {seed}: {run_dir} holds a run with other settings; starting it over")
        shutil.rmtree(run_dir)
    say(f"{position} {spec.label} seed {seed}: {'resuming' if resumed else 'starting'} ({spec.what})")
    record_commit(run_dir, source_commit(REPO))
    return experiments.run_train(args.config, overrides, run_dir, REPO, resumed=resumed)


COMMITS_FILE = "commits.txt"  # one line per process a run took: the code it ran


def source_commit(repo: Path) -> str:
    """The checkout's commit, ``-dirty`` when tracked files differ from it, ``unknown`` outside git."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def record_commit(run_dir: Path, commit: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / COMMITS_FILE, "a") as f:
        f.write(commit + "\n")


def run_commits(root: Path, runs) -> list[str]:
    """Every commit the plan's runs were made with, first seen first (one means a single code version)."""
    seen: list[str] = []
    for spec, seed in runs:
        path = run_path(root, spec.label, seed) / COMMITS_FILE
        if path.exists():
            for commit in path.read_text().split():
                if commit not in seen:
                    seen.append(commit)
    return seen


def commit_line(commits: list[str]) -> str:
    if not commits:
        return "Code: not recorded."
    if len(commits) == 1:
        return f"Code: every run was made at commit `{commits[0]}`."
    return ("Code: **the runs span several commits** (a resumed run can, too): "
            + ", ".join(f"`{c}`" for c in commits) + ".")


def load_summaries(args, root: Path, runs) -> dict:
    """RunSummary per label, for the runs of the plan that reached --steps."""
    from dcpo_mcore.data import ARITH_DATA_SOURCE
    from dcpo_mcore.demo import paper
    from dcpo_mcore.eval import dataset_name
    from dcpo_mcore.metrics import read_metrics

    dataset = dataset_name(ARITH_DATA_SOURCE)
    out: dict[str, list] = {}
    for spec, seed in runs:
        try:
            records = read_metrics(run_path(root, spec.label, seed))
        except (OSError, ValueError):
            continue
        summary = paper.summarise_run(spec.label, seed, records, dataset, args.eval_k)
        if summary.steps and summary.steps[-1] >= args.steps:
            out.setdefault(spec.label, []).append(summary)
        else:
            say(f"{spec.label} seed {seed}: not finished ({len(summary.steps)} of {args.steps} steps); left out")
    return out


def write_report(args, root: Path, runs) -> int:
    from dcpo_mcore.demo import paper

    summaries = load_summaries(args, root, runs)
    if not summaries:
        print(f"reproduce_paper: no finished run under {root}", file=sys.stderr)
        return 1
    plots = write_plots(root / "plots", summaries, args.eval_k)
    found = paper.claims(summaries)
    text = (f"{commit_line(run_commits(root, runs))}\n\n## Claims\n\n{paper.claims_table(found)}\n## Measurements\n\n"
            f"{paper.tables(summaries, args.eval_k)}\n## Plots\n\n"
            + "".join(f"![{p.stem}](plots/{p.name})\n" for p in plots))
    (root / "fidelity.md").write_text(text)
    (root / "claims.json").write_text(json.dumps([c.__dict__ for c in found], indent=2) + "\n")
    print(text)
    say(f"report: {root / 'fidelity.md'}")
    return 0


def write_plots(out: Path, summaries: dict, k: int) -> list[Path]:
    """Across-seed mean curves per run label: RUR, TCR, entropy, held-out Avg@1 and Avg@k."""
    from dcpo_mcore.demo import paper
    from dcpo_mcore.metrics.plots import Series, plot_metric

    out.mkdir(parents=True, exist_ok=True)
    curves = [("rur", "RUR (non-zero advantage ratio)", lambda s: (s.steps, s.series[paper.RUR_KEY])),
              ("tcr", "TCR (token clipping ratio)", lambda s: (s.steps, s.series[paper.TCR_KEY])),
              ("entropy", "mean token entropy", lambda s: (s.steps, s.series[paper.ENTROPY_KEY])),
              ("heldout_avg1", "held-out greedy Avg@1", lambda s: tuple(zip(*s.greedy)) or ([], [])),
              (f"heldout_avg{k}", f"held-out sampled Avg@{k}", lambda s: tuple(zip(*s.sampled)) or ([], []))]
    written = []
    for name, title, get in curves:
        series = [Series(label, *paper.mean_curve(runs, get)) for label, runs in summaries.items()]
        series = [s for s in series if s.steps]
        if series:
            path = out / f"{name}.png"
            plot_metric(series, title=f"{title}, mean over seeds", ylabel=title, path=path)
            written.append(path)
    return written


if __name__ == "__main__":
    sys.exit(main())
