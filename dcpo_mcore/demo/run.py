"""The CPU demo, end to end (``dcpo-demo``): the pretrain -> RL path in miniature, on a laptop CPU.

1. a character tokenizer and a random tiny Qwen2 of the config's architecture (local, seconds);
2. the synthetic arithmetic task: train prompts and a held-out set;
3. pretraining with our megatron engine until held-out greedy accuracy reaches a partial level;
4. DCPO (or ``algo.name=...``) with ``dcpo-train``'s own loop: the pretrained checkpoint is served by
   a real SGLang server and weights are pushed into it after every step; held-out greedy accuracy is
   evaluated through SGLang before the first step and every ``eval_interval`` steps;
5. the honest baseline: the same wall time spent on *more pretraining* instead of RL;
6. ``dcpo-report`` plots and a summary (``RUN_DIR/demo_summary.md`` and ``.json``).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dcpo_mcore.config import load_config
from dcpo_mcore.data.synthetic import ARITH_BALANCED_DATA_SOURCE, ARITH_DATA_SOURCE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoOptions:
    n_train: int = 8000  # training questions (as calibrated); no held-out question is ever among them
    n_eval: int = 200  # the held-out set: a random (i.i.d.) split of the same questions, ~91% sums
    n_eval_balanced: int = 200  # a second, harder held-out set, half products (0: none)
    pretrain_target: float = 0.35  # stop at this held-out greedy accuracy (docs/platform.md [demo-calibration])
    pretrain_eval_every: int = 5  # held-out checks while pretraining: the accuracy jumps within ~25 steps
    pretrain_max_seconds: float = 420.0
    baseline: bool = True  # also measure "more pretraining for the same time"


@dataclass
class Pretrained:
    """What stages 1-3 leave behind: the task files and the pretrained HF checkpoint."""

    init_dir: Path
    pre_dir: Path
    train_file: Path
    eval_file: Path
    train_records: list
    eval_records: list
    result: object  # PretrainResult
    balanced_file: Path | None = None
    balanced_records: list | None = None

    def rl_overrides(self) -> list[str]:
        evals = ",".join(str(f) for f in (self.eval_file, self.balanced_file) if f is not None)
        return [f"model.hf_path={self.pre_dir}", f"data.train_files=[{self.train_file}]",
                f"data.eval_files=[{evals}]", "data.chat_template=none"]


def prepare_pretrained(cfg, opts: DemoOptions, say) -> Pretrained:
    """Stages 1-3 into ``cfg.run_dir``: tokenizer, random model, task, megatron pretraining."""
    from dcpo_mcore.data import arith_alphabet, make_arithmetic_task
    from dcpo_mcore.demo import PretrainSettings, make_char_tokenizer, make_demo_model, pretrain
    from dcpo_mcore.demo import records_from_files

    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    train_file, eval_file, *balanced = make_arithmetic_task(run / "data", seed=cfg.seed, n_train=opts.n_train,
                                                            n_eval=opts.n_eval, n_eval_balanced=opts.n_eval_balanced)
    balanced_file = balanced[0] if balanced else None
    tokenizer = make_char_tokenizer(run / "tokenizer", arith_alphabet())
    init_dir = make_demo_model(run / "model_init", cfg.model, tokenizer, seed=cfg.seed)
    train_records = records_from_files(tokenizer, [train_file])
    eval_records = records_from_files(tokenizer, [eval_file])
    balanced_records = records_from_files(tokenizer, [balanced_file]) if balanced_file else None
    say(f"task: {len(train_records)} train / {len(eval_records)} held-out questions"
        + (f" (+{len(balanced_records)} half-product held-out)" if balanced_records else "") + f"; model {init_dir}")
    pre_dir = run / "model_pretrained"
    pre = pretrain(init_dir, pre_dir, train_records, eval_records,
                   PretrainSettings(target_accuracy=opts.pretrain_target, max_seconds=opts.pretrain_max_seconds,
                                    eval_every=opts.pretrain_eval_every, **_pretrain_common(cfg)), log=say)
    say(f"pretraining: {pre.steps} steps in {pre.seconds:.0f} s -> held-out greedy accuracy {pre.final_accuracy:.1%}")
    return Pretrained(init_dir, pre_dir, train_file, eval_file, train_records, eval_records, pre,
                      balanced_file, balanced_records)


def _pretrain_common(cfg) -> dict:
    return dict(seed=cfg.seed, max_new_tokens=cfg.rollout.max_new_tokens, save_mcore_checkpoint=True)


def run_demo(config_path: str, overrides: list[str], opts: DemoOptions) -> dict:
    from dcpo_mcore.demo import PretrainSettings, pretrain
    from dcpo_mcore.trainer import train

    t_start = time.perf_counter()
    cfg = load_config(config_path, overrides)
    run = Path(cfg.run_dir)
    say = _printer()
    p = prepare_pretrained(cfg, opts, say)  # 1-3
    pre = p.result

    # 4: RL through the real trainer (SGLang rollouts, weight sync, checkpoints, metrics)
    rl_cfg = load_config(config_path, [*overrides, *p.rl_overrides()])
    t_rl = time.perf_counter()
    summary = train(rl_cfg)
    rl_seconds = time.perf_counter() - t_rl
    acc = _eval_series(run, ARITH_DATA_SOURCE)
    acc_balanced = _eval_series(run, ARITH_BALANCED_DATA_SOURCE) if p.balanced_file else None
    say(f"RL ({rl_cfg.algo.name}): {summary['last_step']} steps in {rl_seconds / 60:.1f} min; held-out greedy "
        f"accuracy {acc[0][1]:.1%} -> {acc[-1][1]:.1%}")

    # 5: the same wall time spent on more pretraining instead
    more = None
    if opts.baseline:
        more = pretrain(p.init_dir, run / "model_more_pretraining", p.train_records, p.eval_records,
                        PretrainSettings(target_accuracy=None, max_seconds=rl_seconds, **_pretrain_common(cfg)),
                        init=p.pre_dir, log=say)
        say(f"baseline: {more.steps} more pretraining steps in {more.seconds:.0f} s -> {more.final_accuracy:.1%}")

    # 6: the RL policy out to Hugging Face (what a user would serve), and where each model's accuracy comes from
    rl_dir = _export_policy(run, say)
    models = {"pretrained": p.pre_dir, "after_rl": rl_dir,
              "more_pretraining": run / "model_more_pretraining" if more else None}
    kinds = _accuracy_by_kind(cfg, p, models, p.eval_records)
    kinds_balanced = _accuracy_by_kind(cfg, p, models, p.balanced_records) if p.balanced_records else None

    # 7: report
    result = {
        "algorithm": rl_cfg.algo.name, "seed": cfg.seed, "steps": summary["last_step"],
        "pretrain_steps": pre.total_steps, "pretrain_seconds": pre.seconds,
        "pretrained_accuracy_engine": pre.final_accuracy,
        "rl_start_accuracy": acc[0][1], "rl_end_accuracy": acc[-1][1], "rl_best_accuracy": max(a for _, a in acc),
        "rl_gain_points": 100 * (acc[-1][1] - acc[0][1]), "rl_seconds": rl_seconds,
        "more_pretraining_accuracy": None if more is None else more.final_accuracy,
        "more_pretraining_steps": None if more is None else more.steps,
        "rl_policy_hf": str(rl_dir), "accuracy_by_kind": kinds, "accuracy_by_kind_balanced": kinds_balanced,
        "total_minutes": (time.perf_counter() - t_start) / 60, "eval_series": acc,
        "eval_series_balanced": acc_balanced, "options": asdict(opts),
    }
    (run / "demo_summary.json").write_text(json.dumps(result, indent=2) + "\n")
    (run / "demo_summary.md").write_text(_markdown(result))
    _report(run)
    say(_markdown(result))
    return result


def _export_policy(run: Path, say) -> Path:
    """The trained policy as an HF directory: the ``dcpo-convert mcore-to-hf`` command a user runs on a real
    run (the newest checkpoint of ``run``), in its own process. Why a process: this one still carries the
    world-of-1 environment of the in-process trainer, which would make the converter join it as a rank."""
    import shutil
    import subprocess
    import sys

    from dcpo_mcore.world_env import environ_without_world

    out = run / "model_rl"
    shutil.rmtree(out, ignore_errors=True)  # an earlier demo's export in the same run_dir
    proc = subprocess.run([sys.executable, "-m", "dcpo_mcore.cli.convert", "mcore-to-hf", "--ckpt", str(run),
                           "--out", str(out), "--quiet"], env=environ_without_world(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"exporting the RL policy failed: {proc.stderr.strip()}")
    say(f"RL policy exported to Hugging Face format: {out}")
    return out


def _accuracy_by_kind(cfg, p: "Pretrained", models: dict, records: list) -> dict:
    from transformers import AutoTokenizer

    from .by_kind import accuracy_by_kind, load_hf_model

    tokenizer = AutoTokenizer.from_pretrained(str(p.pre_dir))
    return {name: accuracy_by_kind(load_hf_model(d), tokenizer, records, cfg.rollout.max_new_tokens)
            for name, d in models.items() if d is not None}


def _eval_series(run: Path, data_source: str) -> list[tuple[int, float]]:
    """(step, greedy accuracy on one held-out set) from the run's metrics.jsonl (the trainer's SGLang evaluations)."""
    from dcpo_mcore.eval import dataset_name
    from dcpo_mcore.metrics import held_out_accuracy_series, read_metrics

    series = held_out_accuracy_series(read_metrics(run), dataset_name(data_source))
    if not series:
        raise RuntimeError(f"no evaluation of {data_source} in {run}/metrics.jsonl; the demo needs eval_interval > 0")
    return series


def _markdown(r: dict) -> str:
    more = "not run" if r["more_pretraining_accuracy"] is None else \
        f"{100 * r['more_pretraining_accuracy']:.1f}% ({r['more_pretraining_steps']} more steps)"
    text = (
        f"| seed | pretrained (SGLang greedy) | after {r['algorithm'].upper()} ({r['steps']} steps) | gain | "
        f"best | same time, more pretraining | total minutes |\n|---|---|---|---|---|---|---|\n"
        f"| {r['seed']} | {100 * r['rl_start_accuracy']:.1f}% | {100 * r['rl_end_accuracy']:.1f}% | "
        f"{r['rl_gain_points']:+.1f} pts | {100 * r['rl_best_accuracy']:.1f}% | {more} | {r['total_minutes']:.1f} |\n")
    balanced = r.get("eval_series_balanced")
    if balanced:
        text += (f"\nThe harder held-out set, half products (SGLang greedy): {100 * balanced[0][1]:.1f}% -> "
                 f"{100 * balanced[-1][1]:.1f}% ({100 * (balanced[-1][1] - balanced[0][1]):+.1f} pts).\n")
    text += _kinds_markdown(r.get("accuracy_by_kind") or {}, "the held-out set")
    return text + _kinds_markdown(r.get("accuracy_by_kind_balanced") or {}, "the half-product held-out set")


def _kinds_markdown(kinds: dict, which: str) -> str:
    if not kinds:
        return ""
    rows = "".join(f"| {name.replace('_', ' ')} | {100 * k['all']:.1f}% | {100 * k['addition']:.1f}% | "
                   f"{100 * k['multiplication']:.1f}% |\n" for name, k in kinds.items())
    return (f"\nGreedy accuracy on {which} by kind of question (transformers, exported models):\n\n"
            "| model | all | addition | multiplication |\n|---|---|---|---|\n" + rows)


def _report(run: Path) -> None:
    from dcpo_mcore.cli.report import main as report_main

    try:
        report_main([str(run), "--out", str(run / "report")])
    except SystemExit:
        pass
    except Exception as exc:  # noqa: BLE001 - the plots are a convenience; the numbers are already saved
        log.warning("dcpo-report failed: %s", exc)


def _printer():
    def say(msg: str) -> None:
        print(f"[dcpo-demo] {msg}", flush=True)

    return say
