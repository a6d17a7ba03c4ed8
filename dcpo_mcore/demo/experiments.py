"""Many `dcpo-train` runs from one pretrained demo start, and reading them back.

Used by tools/compare_algos.py and tools/reproduce_paper.py. The rules they share:

* The pretrained start (the demo's stages 1-3) is made once per root and reused only when its
  checkpoint and summary are complete.
* Each run is its own `dcpo-train` process, with a world of its own (no inherited MASTER_PORT).
* A run counts as finished only when its metrics reach the asked step AND its recorded config
  equals the one this call would run. A run made with other settings is run again, never silently
  compared; the differing keys are printed.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

WALL_FILE = "run_wall.json"  # the whole dcpo-train process's wall time, written by run_train
PRETRAIN_SUMMARY = "pretrain_summary.json"
TRAIN_STEP_KEY = "clip/token_clip_ratio"  # present in every training step's metrics record


def prepare_or_reuse_pretrained(cfg, opts, reuse: bool, say: Callable[[str], None]):
    """The demo's pretrained start in ``cfg.run_dir``: reused if ``reuse`` and complete, else made."""
    from dcpo_mcore.demo.run import prepare_pretrained

    pre = reuse_pretrained(Path(cfg.run_dir)) if reuse else None
    if pre is None:
        pre = prepare_pretrained(cfg, opts, say)
        (Path(cfg.run_dir) / PRETRAIN_SUMMARY).write_text(json.dumps({"final_accuracy": pre.result.final_accuracy}))
    else:
        say(f"reusing the pretrained start in {cfg.run_dir}")
    return pre


def reuse_pretrained(run: Path):
    """The Pretrained of an earlier call in the same root, if its checkpoint is complete; else None."""
    from dcpo_mcore.demo.run import Pretrained

    summary = run / PRETRAIN_SUMMARY
    if not (run / "model_pretrained" / "model.safetensors").exists() or not summary.exists():
        return None
    info = json.loads(summary.read_text())
    result = type("Result", (), {"final_accuracy": info["final_accuracy"]})()
    balanced = run / "data" / "eval_balanced.parquet"
    return Pretrained(run / "model_init", run / "model_pretrained", run / "data" / "train.parquet",
                      run / "data" / "eval.parquet", [], [], result,
                      balanced if balanced.exists() else None)


def finished(run_dir: Path, steps: int, expected, say: Callable[[str], None] = print) -> bool:
    """True if run_dir holds a completed run of exactly the config ``expected``."""
    from dcpo_mcore.metrics import read_metrics

    try:
        done = any(r.get("step") == steps and TRAIN_STEP_KEY in r for r in read_metrics(run_dir))
    except Exception:  # noqa: BLE001 - no or unreadable metrics: not finished
        return False
    changed = recorded_differences(run_dir, expected)
    if changed is None:
        return False
    if done and changed:
        say(f"{run_dir}: settings differ from this call ({', '.join(changed[:5])}); running it again")
    return done and not changed


def same_settings(run_dir: Path, expected) -> bool:
    """True if run_dir's recorded config equals ``expected`` (so its checkpoint may be resumed)."""
    return recorded_differences(run_dir, expected) == []


def recorded_differences(run_dir: Path, expected) -> list[str] | None:
    """The dotted keys in which run_dir's recorded config.yaml differs from ``expected``; None when
    nothing readable is recorded."""
    from dcpo_mcore.config import config_to_dict, load_config

    try:
        recorded = config_to_dict(load_config(run_dir / "config.yaml"))
    except Exception:  # noqa: BLE001 - no or unreadable config
        return None
    return differing_keys(recorded, config_to_dict(expected))


def differing_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += differing_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


def run_train(config_path: str, overrides: list[str], run_dir: Path, cwd: Path, resumed: bool = False) -> int:
    """One `dcpo-train` process; returns its exit code and records its wall time in run_dir (marked
    ``resumed`` when it continued a run an earlier process began: then it is not the run's time)."""
    from dcpo_mcore.world_env import environ_without_world

    cmd = [sys.executable, "-m", "dcpo_mcore.cli", "--config", config_path, *overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=environ_without_world())
    if proc.returncode == 0:
        (run_dir / WALL_FILE).write_text(json.dumps({"seconds": time.perf_counter() - t0, "resumed": resumed}) + "\n")
    return proc.returncode


def wall_seconds(run_dir: Path) -> float | None:
    """The whole dcpo-train process's wall time (start-up, server, evals included), when run_train ran it.
    None for a run that was resumed across calls (its time is split) or made elsewhere."""
    try:
        info = json.loads((run_dir / WALL_FILE).read_text())
        return None if info.get("resumed") else float(info["seconds"])
    except (OSError, ValueError, KeyError, AttributeError):
        return None
