"""Read DCPO prompt files (``.parquet``, ``.jsonl``) and validate one row at a time.

Layout (docs/algorithm.md [data-layout]), the same for both formats (JSONL rows carry the nested objects)::

    data_source              str, non-empty
    prompt                   list of {role: str, content: str}; a plain string is accepted too and
                             becomes one user message (handy for hand-written JSONL)
    reward_model.ground_truth  str, non-empty; a list of strings keeps its FIRST element (the
                             verifier grades against one reference; the shipped files are all str)
    extra_info.index         int or non-empty str; required under prompt_key=source_index,
                             optional under prompt_hash (validated when present)

Other columns (ability, raw_problem, a top-level index, ...) are ignored. Validation raises
:class:`BadRow` with a reason from ``BAD_ROW_REASONS`` plus a one-line problem and fix; the dataset
builder decides, by ``on_bad_row``, whether that stops the load or is counted and skipped. File-level
problems (missing, unreadable, unknown extension) always raise :class:`DataError`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .records import DataError

from dcpo_mcore.errors import UserError, one_line

__all__ = ["BadRow", "ParsedRow", "RawRow", "SUPPORTED_EXTENSIONS", "iter_rows", "parse_row"]

SUPPORTED_EXTENSIONS = (".parquet", ".jsonl")


class BadRow(UserError):
    """A row that cannot be used. ``reason`` is one of BAD_ROW_REASONS; ``problem`` says what and how to fix."""

    def __init__(self, reason: str, problem: str):
        self.reason, self.problem = reason, problem
        super().__init__(f"{reason}: {problem}")


@dataclass(frozen=True)
class RawRow:
    """One row as read. ``where`` is "row N" (parquet, 0-based as pyarrow/pandas number rows) or
    "line N" (JSONL, 1-based as editors number lines). ``data`` is None when ``bad`` says why."""

    file: str
    where: str
    data: dict | None
    bad: BadRow | None = None


@dataclass(frozen=True)
class ParsedRow:
    """The fields of a valid row, normalised (index as str, "" when absent)."""

    data_source: str
    messages: list[dict]
    ground_truth: str
    index: str


def iter_rows(path: str | Path) -> Iterator[RawRow]:
    """Yield every row of one file; a missing/unreadable file or an unknown extension is a DataError."""
    p = Path(path)
    if p.suffix not in SUPPORTED_EXTENSIONS:
        raise DataError(f"{p}: unsupported file type {p.suffix or '(no extension)'!r}; "
                        f"data files must be {' or '.join(SUPPORTED_EXTENSIONS)}")
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "does not exist"
        raise DataError(f"{p}: {what}; check data.train_files / data.eval_files (paths are relative "
                        f"to the working directory {Path.cwd()})")
    return _iter_parquet(p) if p.suffix == ".parquet" else _iter_jsonl(p)


def _iter_parquet(p: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(p).to_pylist()  # reads the whole file here, so errors surface before row 0
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError / ... for a broken file
        raise DataError(f"{p}: cannot read as parquet ({one_line(exc, typed=True)}); "
                        "re-export the file with pyarrow or pandas.to_parquet") from exc
    return (RawRow(str(p), f"row {i}", row) for i, row in enumerate(rows))


def _iter_jsonl(p: Path) -> Iterator[RawRow]:
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: cannot read as UTF-8 JSONL ({one_line(exc, typed=True)}); "
                        "check the file's permissions and encoding") from exc
    return _jsonl_rows(str(p), text)


def _jsonl_rows(file: str, text: str) -> Iterator[RawRow]:
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines are not rows (a trailing newline is common)
        where = f"line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield RawRow(file, where, None, BadRow("bad_json", f"not valid JSON ({exc.msg} at column {exc.colno}); "
                                                   "write one JSON object per line"))
            continue
        if not isinstance(obj, dict):
            yield RawRow(file, where, None, BadRow("bad_json", f"a JSON {type(obj).__name__}, not an object; "
                                                   "write one JSON object per line"))
            continue
        yield RawRow(file, where, obj)


def parse_row(data: dict, *, need_index: bool) -> ParsedRow:
    """Validate one row (see the module docstring for the layout); raise BadRow on the first problem."""
    return ParsedRow(data_source=_data_source(data.get("data_source")), messages=_messages(data.get("prompt")),
                     ground_truth=_ground_truth(data.get("reward_model")),
                     index=_index(data.get("extra_info"), need_index))


def _data_source(value: Any) -> str:
    if value is None or value == "":
        raise BadRow("missing_data_source", "no data_source; add a non-empty string column data_source "
                     "(e.g. 'qwen_aime_2024')")
    if not isinstance(value, str):
        raise BadRow("bad_data_source", f"data_source is a {type(value).__name__}, not a string; store it as a string")
    return value


def _messages(value: Any) -> list[dict]:
    fix = "prompt must be a list of {role, content} messages (or one string, used as the user message)"
    if value is None or (isinstance(value, (str, list)) and len(value) == 0):
        raise BadRow("missing_prompt", f"no prompt or an empty one; {fix}")
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise BadRow("bad_prompt", f"prompt is a {type(value).__name__}; {fix}")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise BadRow("bad_prompt", f"prompt[{i}] is a {type(msg).__name__}, not a message; {fix}")
        for field_name in ("role", "content"):
            v = msg.get(field_name)
            if not isinstance(v, str) or (field_name == "role" and not v):
                raise BadRow("bad_prompt", f"prompt[{i}].{field_name} is {_describe(v)}, not a "
                             f"{'non-empty ' if field_name == 'role' else ''}string; {fix}")
        out.append(dict(msg))
    return out


def _ground_truth(reward_model: Any) -> str:
    fix = "set reward_model.ground_truth to the reference answer as a non-empty string"
    if reward_model is not None and not isinstance(reward_model, dict):
        raise BadRow("bad_ground_truth", f"reward_model is a {type(reward_model).__name__}, not an object; {fix}")
    value = (reward_model or {}).get("ground_truth")
    if isinstance(value, list):  # several references: keep the first (documented above)
        if not value:
            raise BadRow("missing_ground_truth", f"reward_model.ground_truth is an empty list; {fix}")
        value = value[0]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BadRow("missing_ground_truth", f"no reward_model.ground_truth or an empty one; {fix}")
    if not isinstance(value, str):
        raise BadRow("bad_ground_truth", f"reward_model.ground_truth is {_describe(value)}; {fix} "
                     "(e.g. '42', not 42)")
    return value


def _index(extra_info: Any, need_index: bool) -> str:
    fix = "set extra_info.index to a unique int or string per problem"
    if extra_info is not None and not isinstance(extra_info, dict):
        raise BadRow("bad_index", f"extra_info is a {type(extra_info).__name__}, not an object; {fix}")
    value = (extra_info or {}).get("index")
    if value is None or value == "":
        if need_index:
            raise BadRow("missing_index", f"no extra_info.index (needed by data.prompt_key=source_index); "
                         f"{fix}, or set data.prompt_key=prompt_hash")
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise BadRow("bad_index", f"extra_info.index is {_describe(value)}; {fix}")
    return str(value)


def _describe(value: Any) -> str:
    """Short, single-line description of an offending value (strings are repr'd and truncated)."""
    if value is None:
        return "missing"
    text = repr(value)
    return f"{type(value).__name__} {text[:40] + '...' if len(text) > 40 else text}"
