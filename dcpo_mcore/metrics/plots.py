"""PNG line plots of one metric against step, several runs overlaid (used by ``dcpo-report``).

Uses matplotlib's object API with the Agg canvas, never pyplot: no global figure state, no GUI
backend chosen from the environment, so it works the same on a login node, in CI and in a test.
matplotlib is imported inside the function so that importing the metrics package stays cheap.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Series:
    label: str        # run label shown in the legend
    steps: list[int]  # x
    values: list[float]  # y; non-finite values are drawn as gaps


def plot_filename(key: str) -> str:
    """A file name for a metric key: ``eval/aime24/avg@1`` -> ``eval_aime24_avg_at_1.png``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key.replace("@", "_at_")).strip("_") + ".png"


def plot_metric(series: list[Series], *, title: str, ylabel: str, path: Path) -> None:
    """One figure, one line per run. Sparse series (eval every N steps) also get markers."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise RuntimeError("plots need matplotlib: run `bash tools/setup_env.sh` "
                           "(or pip install matplotlib)") from None
    fig = Figure(figsize=(7.0, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for s in series:
        ys = [v if math.isfinite(v) else math.nan for v in s.values]
        marker = "o" if len(s.steps) <= 30 else None
        ax.plot(s.steps, ys, label=s.label, marker=marker, markersize=3, linewidth=1.2)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if len(series) > 1:
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")
