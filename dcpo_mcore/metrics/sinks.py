"""Metric sinks: where the trainer's once-per-step metric dict goes (docs/architecture.md [conv-metric-keys]).

The trainer reduces its metrics to one ``dict[str, float]`` per step and calls ``sink.log(step,
metrics)`` once; it never knows which sinks are on. ``metrics.jsonl`` is always written: it is the
run's durable record (fsynced per line, so a killed run keeps every logged step) and what
``dcpo-report`` reads. TensorBoard and W&B are views on the same numbers; their packages are
imported only when switched on, so a missing optional package costs nothing until asked for.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Protocol, runtime_checkable

from .history import encode_line, metrics_path, parse_lines
from .progress import ConsoleProgress


@runtime_checkable
class MetricSink(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def _truncate_after(path: Path, resume_from_step: int | None) -> None:
    """Rewrite ``path`` keeping only intact records with step <= resume_from_step (all if None).

    Why: after a resume the steps past the checkpoint are trained again, and a second copy of
    them would make every plot zig-zag; a killed run's partial last line must go too, or the next
    append would glue onto it and corrupt the middle of the file. Atomic (temp file + os.replace),
    so a crash here leaves either the old file or the new one.
    """
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines(keepends=True)
    records = parse_lines(lines, str(path))
    keep = [r for r in records if resume_from_step is None or r["step"] <= resume_from_step]
    if len(keep) == len([ln for ln in lines if ln.strip()]) and (not text or text.endswith("\n")):
        return  # nothing to drop: leave the file (and its mtime) alone
    fd, tmp = tempfile.mkstemp(prefix=".metrics.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.writelines(encode_line(r["step"], {k: v for k, v in r.items() if k != "step"})
                          for r in keep)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def set_aside_previous_record(run_dir: str | Path) -> Path | None:
    """Rename an earlier run's ``metrics.jsonl`` to ``metrics.jsonl.<n>.old`` before a fresh (not resumed)
    run writes into the same directory. Why: appending would interleave two runs' steps in one record,
    and deleting would lose the earlier run's numbers. Returns the new name, or None if there was none."""
    path = metrics_path(run_dir)
    if not path.exists() or path.stat().st_size == 0:
        return None
    n = 1
    while (target := path.with_name(f"{path.name}.{n}.old")).exists():
        n += 1
    os.replace(path, target)
    return target


class JsonlSink:
    """Appends one JSON line per step to ``RUN_DIR/metrics.jsonl`` (format: see ``history``).

    ``resume_from_step``: the step of the checkpoint being resumed; lines after it are dropped
    before appending. Every line is flushed and fsynced: a step costs seconds to minutes, an fsync
    microseconds to milliseconds, and a killed run keeps everything it logged.
    """

    def __init__(self, run_dir: str | Path, resume_from_step: int | None = None):
        self.path = metrics_path(run_dir)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            _truncate_after(self.path, resume_from_step)
        self._fh = open(self.path, "a", encoding="utf-8")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._fh.write(encode_line(step, metrics))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


class TensorBoardSink:
    """Scalars under ``RUN_DIR/tb``, one tag per metric key (the ``/`` groups them in the UI).

    On resume, ``purge_step`` makes TensorBoard hide the old events past the checkpoint, the same
    de-duplication the JSONL sink does by truncation. Flushed every step, like the JSONL file.
    """

    def __init__(self, run_dir: str | Path, resume_from_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RuntimeError("TensorBoard logging needs the tensorboard package: run "
                               "`bash tools/setup_env.sh` or set logging.tensorboard=false") from None
        purge = None if resume_from_step is None else resume_from_step + 1
        self.log_dir = Path(run_dir) / "tb"
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, float(value), global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbSink:
    """Weights & Biases, offline unless the user set ``WANDB_MODE``: training never needs network.

    Offline runs land in ``RUN_DIR/wandb`` and can be uploaded later with ``wandb sync``.
    """

    def __init__(self, project: str, run_dir: str | Path, config: dict | None = None):
        try:
            import wandb
        except ImportError:
            raise RuntimeError("W&B logging needs the wandb package: "
                               "pip install wandb or set logging.wandb=false") from None
        kwargs = {} if os.environ.get("WANDB_MODE") else {"mode": "offline"}
        self._run = wandb.init(project=project, dir=str(run_dir), config=config or {}, **kwargs)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._run.log({k: float(v) for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        self._run.finish()


class MultiSink:
    """Fans one ``log`` out to every sink; ``close`` closes all even when one of them fails."""

    def __init__(self, sinks: Iterable[MetricSink]):
        self.sinks = list(sinks)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for sink in self.sinks:
            sink.log(step, metrics)

    def close(self) -> None:
        first = None
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # keep closing the rest; the JSONL file matters most
                first = first or exc
        if first is not None:
            raise first

    def __enter__(self) -> "MultiSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_sinks(run_dir: str | Path, *, tensorboard: bool, wandb: bool, wandb_project: str,
                console: bool, total_steps: int, start_step: int = 0, console_every: int = 1,
                resume_from_step: int | None = None, wandb_config: dict | None = None) -> MultiSink:
    """The sinks the ``logging`` config asks for; the JSONL record is always first and always on.

    Optional sinks are built after it, so a missing tensorboard/wandb fails before any step runs.
    """
    sinks: list[MetricSink] = [JsonlSink(run_dir, resume_from_step=resume_from_step)]
    try:
        if tensorboard:
            sinks.append(TensorBoardSink(run_dir, resume_from_step=resume_from_step))
        if wandb:
            sinks.append(WandbSink(wandb_project, run_dir, wandb_config))
    except BaseException:
        MultiSink(sinks).close()
        raise
    if console:
        sinks.append(ConsoleProgress(total_steps, stream=sys.stderr, start_step=start_step, every=console_every))
    return MultiSink(sinks)
