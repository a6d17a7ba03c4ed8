"""The console progress line: one line per logged step, readable in a Slurm log as well as a tty.

    step 12/400 (3.0%) | 41.2 s/step | ETA 4h26m | reward 0.41 | acc 0.55 | TCR 0.012 | RUR 0.62

Why these fields: reward and accuracy say whether it learns; TCR (``clip/token_clip_ratio``) and
RUR (``adv/nonzero_ratio``) are the two numbers the DCPO paper argues with; s/step and ETA say
when to come back. A key the trainer did not log is left out, never shown as 0.

The speed is the mean of ``timing/step_seconds`` over the steps logged by *this* process (the
trainer's own measure); without that key it is wall time since construction divided by the steps
done since ``start_step``. Either way a resumed run is not credited with the steps before it.
The formatting functions are pure so tests can check them with hand-computed values.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Callable, TextIO

# (metric key, label) in display order.
DISPLAY_KEYS: tuple[tuple[str, str], ...] = (
    ("reward/mean", "reward"),
    ("reward/correct_ratio", "acc"),
    ("clip/token_clip_ratio", "TCR"),
    ("adv/nonzero_ratio", "RUR"),
)
STEP_SECONDS_KEY = "timing/step_seconds"


def format_duration(seconds: float | None) -> str:
    """Compact duration: ``42s``, ``12m05s``, ``4h33m``, ``2d03h``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def eta_seconds(step: int, total_steps: int, seconds_per_step: float | None) -> float | None:
    """Seconds left for the steps after ``step``; None while the speed is unknown."""
    if seconds_per_step is None or not math.isfinite(seconds_per_step):
        return None
    return max(total_steps - step, 0) * seconds_per_step


def _fmt_value(value: float) -> str:
    return f"{value:.3g}"


def format_progress_line(step: int, total_steps: int, seconds_per_step: float | None,
                         metrics: dict[str, float]) -> str:
    """The whole progress line; fields whose input is missing are omitted."""
    pct = 100.0 * step / total_steps if total_steps > 0 else 0.0
    parts = [f"step {step}/{total_steps} ({pct:.1f}%)"]
    if seconds_per_step is not None and math.isfinite(seconds_per_step):
        parts.append(f"{seconds_per_step:.1f} s/step")
        parts.append(f"ETA {format_duration(eta_seconds(step, total_steps, seconds_per_step))}")
    for key, label in DISPLAY_KEYS:
        if key in metrics:
            parts.append(f"{label} {_fmt_value(float(metrics[key]))}")
    return " | ".join(parts)


class ConsoleProgress:
    """A metric sink that prints the progress line every ``every`` steps, and always for the first step
    it sees and the last step of the run (``logging.log_interval``); the step time averages every step."""

    def __init__(self, total_steps: int, stream: TextIO = sys.stderr, start_step: int = 0,
                 clock: Callable[[], float] = time.monotonic, every: int = 1):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = int(every)
        self._printed_any = False
        self.total_steps = int(total_steps)
        self.start_step = int(start_step)
        self._stream = stream
        self._clock = clock
        self._t0 = clock()
        self._sum_seconds = 0.0  # cumulative moving average of timing/step_seconds
        self._n_seconds = 0

    def seconds_per_step(self, step: int) -> float | None:
        """Mean logged step time since start, else wall time per step done since ``start_step``."""
        if self._n_seconds:
            return self._sum_seconds / self._n_seconds
        done = step - self.start_step
        return (self._clock() - self._t0) / done if done > 0 else None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        value = metrics.get(STEP_SECONDS_KEY)
        if value is not None and math.isfinite(float(value)):
            self._sum_seconds += float(value)
            self._n_seconds += 1
        if self._printed_any and step % self.every and step != self.total_steps:
            return
        self._printed_any = True
        line = format_progress_line(step, self.total_steps, self.seconds_per_step(step), metrics)
        print(line, file=self._stream, flush=True)

    def close(self) -> None:
        """Nothing to release: the stream belongs to the caller."""
