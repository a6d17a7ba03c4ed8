"""Console entry points: parse, build, run. No training logic lives here."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from dcpo_mcore.argparsing import OneLineErrorParser
from dcpo_mcore.config import ConfigError, load_config, save_resolved_config


def _train_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="dcpo-train",
        description="Train a policy with DCPO (or GRPO/DAPO/GSPO). Overrides are dotted key=value pairs, "
        "e.g. algo.name=grpo rollout.n_samples_per_prompt=16.",
    )
    p.add_argument("--config", required=True, help="YAML config file (see configs/)")
    p.add_argument("--check", action="store_true",
                   help="validate the config, the overrides and the files they name, print the resolved "
                   "config, then exit: 0 if all is well, 2 with one line per problem; starts nothing, writes nothing")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides applied on top of the YAML")
    return p


def check_config(config: str, overrides: list[str]) -> tuple[str | None, list[str]]:
    """(the resolved config as YAML, or None; every problem ``dcpo-train`` would refuse at launch, one
    line each), without starting or writing anything."""
    import yaml

    from dcpo_mcore.config import check_paths, config_to_dict

    try:
        cfg = load_config(config, overrides)
        resolved = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
        check_paths(cfg)
    except ConfigError as exc:
        return None, exc.problems
    return resolved, []


def _cpu_allocator_env() -> None:
    """Transparent huge pages for torch's CPU allocator (2-4x faster fresh 512 MiB weight-sync buffers;
    docs/performance.md). torch reads the variable at the process's first CPU allocation, which has
    not happened yet when an entry point starts; an explicit setting in the environment wins."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def _exit_cleanly_on_sigterm() -> None:
    """SIGTERM (scancel, a job scheduler, `kill`) unwinds like Ctrl-C: the trainer's teardown then stops
    the SGLang servers and grader workers it started, instead of leaving them running as orphans."""
    import signal

    def on_term(signum, frame):  # noqa: ARG001 - signal handler signature
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)


def _log_to_file(path: Path) -> Path:
    """Everything logged in this process also goes to ``path`` (appended: a resumed run keeps its history)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return path


def run_reporting_errors(prog: str, work, log_file: Path | None):
    """``work()``, with a user's mistake (:func:`dcpo_mcore.errors.is_user_error`) reported in one line
    (returns ``(False, None)``), and a bug left to raise with its full traceback, after one line saying
    where the log is. ``(True, result)`` otherwise."""
    from dcpo_mcore.errors import is_user_error

    try:
        return True, work()
    except Exception as exc:
        if is_user_error(exc):
            logging.getLogger(__name__).debug("%s failed", prog, exc_info=True)
            print(f"{prog}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return False, None
        logging.getLogger(__name__).error("%s: internal error (a bug: please report it with this traceback)",
                                          prog, exc_info=True)
        where = f"; the run's log is {log_file}" if log_file is not None else ""
        print(f"{prog}: internal error {type(exc).__name__} (a bug; full traceback follows{where})",
              file=sys.stderr, flush=True)
        raise


def train_main(argv: list[str] | None = None) -> int:
    _cpu_allocator_env()
    _exit_cleanly_on_sigterm()
    args = _train_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("megatron").setLevel(logging.WARNING)  # its INFO lines dump whole configs per build
    if args.check:
        resolved, problems = check_config(args.config, args.overrides)
        for line in problems:
            print(line, file=sys.stderr)
        if not problems:
            print(f"{resolved}# dcpo-train: {args.config} is valid; the resolved config is above", flush=True)
        return 2 if problems else 0
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"dcpo-train: config error:\n{exc}", file=sys.stderr)
        return 2
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = save_resolved_config(cfg, run_dir)
    print(f"[dcpo-train] resolved config written to {saved}", flush=True)
    from dcpo_mcore.trainer import train

    log_file = _log_to_file(run_dir / "train.log")
    ok, summary = run_reporting_errors("dcpo-train", lambda: train(cfg), log_file)
    if not ok:
        return 1
    done = "preempted at" if summary["preempted"] else "finished at"
    print(f"[dcpo-train] {done} step {summary['last_step']}/{cfg.steps}; metrics in {run_dir}/metrics.jsonl",
          flush=True)
    return 0


def demo_main(argv: list[str] | None = None) -> int:
    """``dcpo-demo``: tokenizer + tiny model -> task -> megatron pretraining -> SGLang + DCPO -> eval -> report."""
    from dcpo_mcore.demo.run import DemoOptions

    _cpu_allocator_env()
    _exit_cleanly_on_sigterm()
    defaults = DemoOptions()
    p = OneLineErrorParser(prog="dcpo-demo", description="The CPU demo, end to end, in RUN_DIR (run_dir=...).")
    p.add_argument("--config", default="configs/demo_cpu.yaml", help="YAML config (default: the CPU demo's)")
    p.add_argument("--n-train", type=int, default=defaults.n_train, help="training questions")
    p.add_argument("--pretrain-target", type=float, default=defaults.pretrain_target,
                   help="stop pretraining at this held-out greedy accuracy")
    p.add_argument("--pretrain-max-seconds", type=float, default=defaults.pretrain_max_seconds)
    p.add_argument("--n-eval-balanced", type=int, default=defaults.n_eval_balanced,
                   help="size of the second, half-product held-out set (0: none)")
    p.add_argument("--no-baseline", action="store_true", help="skip the 'more pretraining, same time' baseline")
    p.add_argument("overrides", nargs="*", help="dotted key=value config overrides, e.g. steps=100 algo.name=grpo")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("megatron").setLevel(logging.WARNING)
    try:
        load_config(args.config, args.overrides)  # fail on a bad config before any work
    except ConfigError as exc:
        print(f"dcpo-demo: config error:\n{exc}", file=sys.stderr)
        return 2
    from dcpo_mcore.demo.run import run_demo

    opts = DemoOptions(n_train=args.n_train, pretrain_target=args.pretrain_target,
                       pretrain_max_seconds=args.pretrain_max_seconds, n_eval_balanced=args.n_eval_balanced,
                       baseline=not args.no_baseline)
    ok, _ = run_reporting_errors("dcpo-demo", lambda: run_demo(args.config, args.overrides, opts), None)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(train_main())
