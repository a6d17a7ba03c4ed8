"""Every console entry point, one thin module each: parse, build, run. No training logic lives here.

    dcpo-train    train.py    (``python -m dcpo_mcore.cli`` runs it too: torchrun, Slurm)
    dcpo-demo     demo.py
    dcpo-eval     eval.py     (the work: dcpo_mcore/eval/)
    dcpo-convert  convert.py  (the work: dcpo_mcore/convert/)
    dcpo-report   report.py   (the work: dcpo_mcore/metrics/report.py)
    common.py     the one-line argparse parser, the user-error/bug split, the log file, SIGTERM

The names below are imported on first use, so ``dcpo-eval`` or ``dcpo-convert`` does not pay for the
trainer's config stack at start-up.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"train_main": "train", "check_config": "train", "demo_main": "demo",
            "run_reporting_errors": "common", "OneLineErrorParser": "common"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
