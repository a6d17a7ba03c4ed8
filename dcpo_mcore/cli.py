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
    logging.getLogger("megatron").setLevel(logging.WARNING)  # its INFO lines dump whole configs per build
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

    try:
        summary = train(cfg)
    except (ValueError, OSError, RuntimeError) as exc:
        # Setup and data problems are reported in one line; a traceback helps nobody there. The full
        # traceback is still in the log at DEBUG level for developers.
        logging.getLogger(__name__).debug("training failed", exc_info=True)
        print(f"dcpo-train: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    done = "preempted at" if summary["preempted"] else "finished at"
    print(f"[dcpo-train] {done} step {summary['last_step']}/{cfg.steps}; metrics in {run_dir}/metrics.jsonl",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
