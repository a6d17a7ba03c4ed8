"""One exception for every config problem, and the translation of pydantic's errors into it.

Users read these messages at launch time, so each problem is one line `field.path: message`
(design.md §13), never a pydantic dump with URLs and error-type codes.
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable, Sequence

from pydantic import BaseModel, ValidationError

from dcpo_mcore.errors import UserError


class ConfigError(UserError, ValueError):
    """Every configuration problem. `str()` is one line per problem; `.problems` holds the lines."""

    def __init__(self, problems: str | Iterable[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class ConfigProblems(UserError, ValueError):
    """Raised *inside* validators with lines that already carry their full field path.

    pydantic wraps any ValueError into its ValidationError; `from_validation_error` finds this
    instance in the error context and passes the lines through unchanged, so cross-field checks can
    report several problems at once and name every field involved.
    """

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def format_loc(loc: Sequence[Any]) -> str:
    """('data', 'train_files', 0) -> 'data.train_files[0]'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<config>"


def suggest(name: str, candidates: Iterable[str]) -> list[str]:
    return difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)


def section_at(root: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model class reached by following `loc` (field names only) from `root`."""
    model: type[BaseModel] = root
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        sub = getattr(field, "annotation", None) if field else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return None
        model = sub
    return model


def unknown_key_message(root: type[BaseModel], loc: Sequence[Any]) -> str:
    """'algo.eps_lo: unknown key; did you mean algo.eps_low?' (or the list of valid keys)."""
    parent, key = loc[:-1], str(loc[-1])
    section = section_at(root, parent)
    prefix = format_loc(parent) + "." if parent else ""
    if section is None:
        return f"{format_loc(loc)}: unknown key"
    close = suggest(key, section.model_fields)
    if close:
        return f"{format_loc(loc)}: unknown key; did you mean {', '.join(prefix + c for c in close)}?"
    where = format_loc(parent) if parent else "the top level"
    return f"{format_loc(loc)}: unknown key; valid keys in {where}: {', '.join(section.model_fields)}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def from_validation_error(err: ValidationError, root: type[BaseModel]) -> ConfigError:
    """Turn pydantic's ValidationError into a ConfigError with one `path: message` line per problem."""
    lines: list[str] = []
    for e in err.errors():
        ctx_err = (e.get("ctx") or {}).get("error")
        if isinstance(ctx_err, ConfigProblems):
            lines.extend(ctx_err.problems)
            continue
        loc = e["loc"]
        if e["type"] == "extra_forbidden":
            lines.append(unknown_key_message(root, loc))
            continue
        msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        value = e.get("input")
        got = f" (got {_short(value)})" if not isinstance(value, (dict, list, BaseModel)) else ""
        lines.append(f"{format_loc(loc)}: {msg}{got}")
    return ConfigError(lines)
