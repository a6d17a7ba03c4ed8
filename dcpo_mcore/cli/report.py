"""``dcpo-report``: parse, call :func:`dcpo_mcore.metrics.report.write_report`, report.

Exit codes: 0 written; 2 bad input (a directory without metrics.jsonl, a corrupt line, wrong
--labels, an --out that is a file), one line on stderr and nothing written; 1 matplotlib missing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dcpo_mcore.metrics import MetricsFileError
from dcpo_mcore.metrics.report import ReportInputError, load_runs, write_report

from .common import OneLineErrorParser


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="dcpo-report", description="Plot and summarise the metrics.jsonl of one or "
                "more dcpo-train run directories (several runs are overlaid, one figure per metric).")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directory holding metrics.jsonl")
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR/report for one "
                   "run, ./dcpo_report for several)")
    p.add_argument("--labels", default=None, help="comma-separated legend labels, one per run "
                   "(default: the run directory names)")
    return p


def _out_dir(args) -> Path:
    out = Path(args.out) if args.out else (
        Path(args.run_dirs[0]) / "report" if len(args.run_dirs) == 1 else Path("dcpo_report"))
    if out.exists() and not out.is_dir():
        raise ReportInputError(f"--out {out} exists and is not a directory; pick another --out")
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        runs = load_runs(args.run_dirs, args.labels)
        out = _out_dir(args)
    except (MetricsFileError, ReportInputError) as exc:
        print(f"dcpo-report: error: {exc}", file=sys.stderr)
        return 2
    try:
        md = write_report(runs, out)
    except RuntimeError as exc:  # matplotlib missing
        print(f"dcpo-report: error: {exc}", file=sys.stderr)
        return 1
    print(f"dcpo-report: wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
