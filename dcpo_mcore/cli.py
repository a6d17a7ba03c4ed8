"""Console entry points: parse, build, run. No training logic lives here."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dcpo_mcore.config import ConfigError, load_config, save_resolved_config


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dcpo-train",
        description="Train a policy with DCPO (or GRPO/DAPO/GSPO). Overrides are dotted key=value pairs, "
        "e.g. algo.name=grpo rollout.n_samples_per_prompt=16.",
    )
    p.add_argument("--config", required=True, help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides applied on top of the YAML")
    return p


def train_main(argv: list[str] | None = None) -> int:
    args = _train_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"dcpo-train: config error:\n{exc}", file=sys.stderr)
        return 2
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = save_resolved_config(cfg, run_dir)
    print(f"[dcpo-train] resolved config written to {saved}", flush=True)
    # Until the Megatron engine and SGLang rollouts are wired in (issues 3-5), the trainer runs the
    # algorithm smoke run: every foundation piece end to end on a tiny in-process policy.
    print("[dcpo-train] NOTE: running the algorithm smoke run (tiny in-process policy); the Megatron + "
          "SGLang trainer is not wired in yet.", flush=True)
    from dcpo_mcore import smoke

    summary = smoke.run(cfg, run_dir)
    print(f"[dcpo-train] greedy accuracy {summary['greedy_acc_start']:.1%} -> "
          f"{summary['greedy_acc_end']:.1%} ({summary['minutes']:.1f} min); summary in {run_dir}/summary.json",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
