"""``dcpo-train`` (and ``dcpo-train --check``): parse, build, run. No training logic lives here."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dcpo_mcore.config import ConfigError, load_config, save_resolved_config

from .common import OneLineErrorParser, cpu_allocator_env, exit_cleanly_on_sigterm, log_to_file, run_reporting_errors


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


def train_main(argv: list[str] | None = None) -> int:
    cpu_allocator_env()
    exit_cleanly_on_sigterm()
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

    log_file = log_to_file(run_dir / "train.log")
    ok, summary = run_reporting_errors("dcpo-train", lambda: train(cfg), log_file)
    if not ok:
        return 1
    done = "preempted at" if summary["preempted"] else "finished at"
    print(f"[dcpo-train] {done} step {summary['last_step']}/{cfg.steps}; metrics in {run_dir}/metrics.jsonl",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
