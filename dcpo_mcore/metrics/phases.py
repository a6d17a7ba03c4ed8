"""Wall time and peak memory of each phase of a training step, on every rank.

The loop wraps each phase (rollout, old log-probs, the optimizer steps, sync, eval, checkpoint) in
``with meter("name"):``. Rank 0 logs the seconds as ``timing/<name>_seconds``; every rank appends
its own row of per-phase peak RSS to ``<run_dir>/memory/rank_<r>.jsonl``, so a rank that runs out of
memory can be told apart from one that does not, without a collective in the loop
(docs/performance.md [scale]).

Peak RSS per phase: the kernel's high-water mark (``VmHWM``) is reset at the start of a phase by
writing 5 to ``/proc/self/clear_refs`` and read at its end. Where the reset is refused (no such
file, or a kernel without it), the row says ``"peak_is_since_start": true``: each phase then reads
the peak since the process started, an upper bound.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

PHASES = ("rollout", "old_logprobs", "train", "sync", "eval", "save")


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status in bytes, or None where /proc is not there."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def read_peak_rss_bytes() -> int | None:
    """This process's VmHWM (peak resident set since start or the last reset) in bytes, or None."""
    return _status_bytes("VmHWM")


def read_rss_bytes() -> int | None:
    """This process's current resident set (VmRSS) in bytes, or None."""
    return _status_bytes("VmRSS")


def reset_peak_rss() -> bool:
    """Restart VmHWM from the current RSS; False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PhaseMeter:
    """Seconds and peak RSS per phase of the current step. ``memory_file``: this rank's JSONL, or None."""

    def __init__(self, memory_file: Path | None = None):
        self.memory_file = memory_file
        self.seconds: dict[str, float] = {}
        self.peak_rss: dict[str, int] = {}
        self.peak_is_since_start = False

    @contextmanager
    def __call__(self, name: str):
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; known: {', '.join(PHASES)}")
        if not reset_peak_rss():
            self.peak_is_since_start = True
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            peak = read_peak_rss_bytes()
            if peak is not None:
                self.peak_rss[name] = max(self.peak_rss.get(name, 0), peak)

    def end_step(self, step: int) -> dict[str, float]:
        """The step's ``timing/<phase>_seconds`` metrics; appends this rank's memory row; starts afresh."""
        metrics = {f"timing/{name}_seconds": s for name, s in self.seconds.items()}
        if self.memory_file is not None and self.peak_rss:
            row = {"step": step, **{f"{k}_peak_rss_bytes": v for k, v in self.peak_rss.items()}}
            if self.peak_is_since_start:
                row["peak_is_since_start"] = True
            self.memory_file.parent.mkdir(parents=True, exist_ok=True)
            with self.memory_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
        self.seconds, self.peak_rss = {}, {}
        return metrics


def read_memory_rows(run_dir: str | Path) -> dict[int, dict[int, dict]]:
    """{rank: {step: row}} from ``run_dir/memory/rank_*.jsonl`` (the last row of a step wins: a resumed
    run writes the steps it redoes again)."""
    out: dict[int, dict[int, dict]] = {}
    for path in sorted(Path(run_dir, "memory").glob("rank_*.jsonl")):
        rank = int(path.stem.split("_")[1])
        rows = out.setdefault(rank, {})
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[int(row["step"])] = row
    return out
