"""The ``metrics.jsonl`` format: one writer-side encoder, one reader, in one place.

Format: one JSON object per line, ``{"step": <int>, "<namespace>/<name>": <number>, ...}``, in the
order the steps were logged. JSON has no NaN or infinity, and a NaN loss is exactly the step one
wants to see in the file, so non-finite floats are written as the strings ``"nan"``, ``"inf"`` and
``"-inf"`` (strict JSON, readable by ``jq`` and pandas) and :func:`read_metrics` turns them back
into floats. Only those three strings are special; every value written is a number.

The reader tolerates a damaged *last* line, because a run killed in the middle of a write leaves
one; a damaged line anywhere else means the file was edited or corrupted, and that is an error.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from dcpo_mcore.errors import UserError

METRICS_FILE = "metrics.jsonl"
_NONFINITE_TO_TEXT = {math.inf: "inf", -math.inf: "-inf"}
_TEXT_TO_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class MetricsFileError(UserError, ValueError):
    """A missing or corrupt metrics file; the message is one line with the cause and the fix."""


def metrics_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / METRICS_FILE


def _encode_value(key: str, value) -> float | str:
    try:
        v = float(value)  # accepts python/numpy scalars and 0-dim tensors
    except (TypeError, ValueError):
        raise TypeError(f"metric {key!r} has non-numeric value {value!r}; log numbers only") from None
    if math.isnan(v):
        return "nan"
    return _NONFINITE_TO_TEXT.get(v, v)


def encode_line(step: int, metrics: dict[str, float]) -> str:
    """One record as a JSON line (with the trailing newline), non-finite floats as strings."""
    if "step" in metrics:
        raise ValueError("'step' is reserved in metrics.jsonl; pass the step as the step argument")
    record = {"step": int(step)}
    record.update({k: _encode_value(k, v) for k, v in metrics.items()})
    return json.dumps(record, allow_nan=False) + "\n"


def decode_line(text: str) -> dict:
    """Parse one line back into ``{"step": int, key: float}``; raises ValueError when malformed."""
    record = json.loads(text)
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        raise ValueError("not a JSON object with an integer 'step'")
    out = {"step": record["step"]}
    for key, value in record.items():
        if key == "step":
            continue
        if isinstance(value, str) and value in _TEXT_TO_NONFINITE:
            value = _TEXT_TO_NONFINITE[value]
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"value of {key!r} is {value!r}, not a number")
        out[key] = float(value)
    return out


def parse_lines(lines: list[str], source: str) -> list[dict]:
    """Decode complete records; drop a damaged last line, refuse a damaged line before it.

    ``lines`` are the file's lines with their line ends; ``source`` names the file in errors.
    """
    numbered = [(i + 1, ln) for i, ln in enumerate(lines) if ln.strip()]
    records = []
    for pos, (lineno, text) in enumerate(numbered):
        try:
            records.append(decode_line(text))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            if pos == len(numbered) - 1:
                break  # the run was killed mid-write: everything before this line is intact
            reason = str(exc).splitlines()[0]
            raise MetricsFileError(
                f"{source}:{lineno}: corrupt metrics line ({reason}); only the last line may be "
                f"incomplete, so the file was edited or damaged: fix or delete line {lineno}") from None
    return records


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All records of a run, in file order: ``[{"step": 1, "reward/mean": 0.4, ...}, ...]``.

    Non-finite values come back as float nan/inf. A truncated last line (killed run) is dropped.
    """
    path = metrics_path(run_dir)
    if not path.is_file():
        hint = "it is not a directory" if not Path(run_dir).is_dir() else f"it has no {METRICS_FILE}"
        raise MetricsFileError(f"no metrics file {path} ({hint}); pass a run directory written by "
                               f"dcpo-train (logging writes {METRICS_FILE} at the top of it)")
    with open(path, encoding="utf-8", errors="replace") as fh:
        return parse_lines(fh.readlines(), str(path))


def held_out_accuracy_series(rows: list[dict], dataset: str) -> list[tuple[int, float]]:
    """``(step, Avg@1)`` for every record with an in-training evaluation of ``dataset`` (the key
    ``eval/<dataset>/avg@1``, see ``eval.dataset_name``), in file order."""
    key = f"eval/{dataset}/avg@1"
    return [(int(row["step"]), float(row[key])) for row in rows if key in row]
