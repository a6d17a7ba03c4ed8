"""``dcpo-demo``: the CPU demo end to end (the work is :func:`dcpo_mcore.demo.run.run_demo`)."""
from __future__ import annotations

import logging
import sys

from dcpo_mcore.config import ConfigError, load_config

from .common import OneLineErrorParser, cpu_allocator_env, exit_cleanly_on_sigterm, run_reporting_errors


def demo_main(argv: list[str] | None = None) -> int:
    """``dcpo-demo``: tokenizer + tiny model -> task -> megatron pretraining -> SGLang + DCPO -> eval -> report."""
    from dcpo_mcore.demo.run import DemoOptions

    cpu_allocator_env()
    exit_cleanly_on_sigterm()
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
    sys.exit(demo_main())
