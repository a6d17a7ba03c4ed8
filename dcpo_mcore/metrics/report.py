"""``dcpo-report``'s work: plots and a markdown summary of one or more runs' ``metrics.jsonl``
(the command line is :mod:`dcpo_mcore.cli.report`).

    dcpo-report runs/dcpo-7b                          # -> runs/dcpo-7b/report/
    dcpo-report runs/dcpo runs/grpo --labels DCPO,GRPO --out cmp/

Why a separate tool: the numbers the paper argues with (reward, accuracy, TCR, RUR, entropy,
response length, eval accuracy) should be one command away from any run directory, on a machine
without TensorBoard, and comparable across runs in one figure per metric. A key metric that no run
logged is not drawn as a flat line: it is listed as absent, so the report never pretends.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .history import read_metrics
from .plots import Series, plot_filename, plot_metric

from dcpo_mcore.errors import UserError

# (key, title, png file stem): the key metrics, in report order. eval/* keys are added per run set.
REPORT_METRICS: tuple[tuple[str, str, str], ...] = (
    ("reward/mean", "Reward (mean)", "reward"),
    ("reward/correct_ratio", "Accuracy (correct ratio)", "accuracy"),
    ("clip/token_clip_ratio", "TCR (token clip ratio)", "tcr"),
    ("adv/nonzero_ratio", "RUR (non-zero advantage ratio)", "rur"),
    ("actor/entropy", "Entropy", "entropy"),
    ("rollout/response_length_mean", "Response length (mean tokens)", "response_length"),
)
EVAL_PREFIX = "eval/"


class ReportInputError(UserError, ValueError):
    """Bad command-line input; one line with the cause and the fix."""


@dataclass
class Run:
    label: str
    path: Path
    records: list[dict]


@dataclass(frozen=True)
class Stats:
    first: float
    last: float
    min: float
    max: float
    mean: float
    points: int  # records carrying the key


def summarize(records: list[dict], key: str) -> Stats | None:
    """first/last over the records that have ``key``; min/max/mean over their finite values."""
    values = [r[key] for r in records if key in r]
    if not values:
        return None
    finite = [v for v in values if math.isfinite(v)]
    lo, hi, mean = (min(finite), max(finite), sum(finite) / len(finite)) if finite else (math.nan,) * 3
    return Stats(values[0], values[-1], lo, hi, mean, len(values))


def series(run: Run, key: str) -> Series:
    pts = [(r["step"], r[key]) for r in run.records if key in r]
    return Series(run.label, [s for s, _ in pts], [v for _, v in pts])


def report_metrics(runs: list[Run]) -> list[tuple[str, str, str]]:
    """The key metrics plus every ``eval/*`` key any run logged (sorted), as (key, title, stem)."""
    eval_keys = sorted({k for run in runs for r in run.records for k in r if k.startswith(EVAL_PREFIX)})
    evals = [(k, f"Eval accuracy ({k[len(EVAL_PREFIX):]})", plot_filename(k)[:-4]) for k in eval_keys]
    return [*REPORT_METRICS, *evals]


def _labels(paths: list[Path], labels: str | None) -> list[str]:
    if labels is not None:
        out = [s.strip() for s in labels.split(",")]
        if len(out) != len(paths) or not all(out):
            raise ReportInputError(f"--labels has {len(out)} label(s) for {len(paths)} run(s) "
                                   f"({labels!r}); give one non-empty label per run, comma-separated")
        if len(set(out)) != len(out):
            raise ReportInputError(f"--labels {labels!r} repeats a label; make them unique")
        return out
    names = [p.resolve().name or str(p) for p in paths]
    if len(set(names)) != len(names):
        names = [str(p) for p in paths]
    if len(set(names)) != len(names):
        names = [f"{n}#{i + 1}" for i, n in enumerate(names)]
    return names


def load_runs(run_dirs: list[str], labels: str | None) -> list[Run]:
    """Read and validate every run before anything is written."""
    paths = [Path(d) for d in run_dirs]
    names = _labels(paths, labels)
    runs = []
    for name, path in zip(names, paths):
        records = read_metrics(path)
        if not records:
            raise ReportInputError(f"{path}/metrics.jsonl has no complete step yet; "
                                   f"report it after the run has logged at least one step")
        runs.append(Run(name, path, records))
    return runs


def _num(v: float) -> str:
    return f"{v:.6g}" if math.isfinite(v) else str(v)


def _step_range(run: Run) -> str:
    steps = {r["step"] for r in run.records}
    return f"{len(steps)} steps logged (step {min(steps)}-{max(steps)})"


def _run_section(run: Run, metrics: list[tuple[str, str, str]]) -> list[str]:
    lines = [f"## Run `{run.label}`", "", f"Directory: `{run.path}`; {_step_range(run)}.", "",
             "| metric | key | first | last | min | max | mean | points |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    absent = []
    for key, title, _ in metrics:
        st = summarize(run.records, key)
        if st is None:
            absent.append(f"`{key}`")
            continue
        cells = [_num(x) for x in (st.first, st.last, st.min, st.max, st.mean)]
        lines.append(f"| {title} | `{key}` | {' | '.join(cells)} | {st.points} |")
    if absent:
        lines += ["", f"Absent in this run: {', '.join(absent)}."]
    return lines + [""]


def render_markdown(runs: list[Run], metrics: list[tuple[str, str, str]],
                    plotted: dict[str, str]) -> str:
    """The report; ``plotted`` maps each drawn key to its PNG file name (relative link)."""
    lines = ["# dcpo-report", "",
             f"{len(runs)} run(s). One row per logged step in `metrics.jsonl`; min/max/mean skip "
             "non-finite values, first/last are shown as logged.", "",
             "| run | directory | steps |", "|---|---|---|"]
    lines += [f"| {r.label} | `{r.path}` | {_step_range(r)} |" for r in runs]
    lines += ["", "## Plots", ""]
    for key, title, _ in metrics:
        if key in plotted:
            lines += [f"### {title} (`{key}`)", "", f"![{title}]({plotted[key]})", ""]
    absent = [f"`{k}` ({t})" for k, t, _ in metrics if k not in plotted]
    lines += ["## Absent metrics", "",
              f"Not logged by any run, so not plotted: {', '.join(absent)}." if absent
              else "None: every key metric was logged by at least one run.", ""]
    for run in runs:
        lines += _run_section(run, metrics)
    return "\n".join(lines)


def write_report(runs: list[Run], out: Path) -> Path:
    """PNG per present metric plus ``report.md`` in ``out``; returns the markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = report_metrics(runs)
    plotted = {}
    for key, title, stem in metrics:
        drawn = [series(run, key) for run in runs]
        drawn = [s for s in drawn if s.steps]
        if not drawn:
            continue
        plotted[key] = f"{stem}.png"
        plot_metric(drawn, title=f"{title} - {key}", ylabel=key, path=out / plotted[key])
    md = out / "report.md"
    md.write_text(render_markdown(runs, metrics, plotted), encoding="utf-8")
    return md
