"""One exception for every config problem, and the translation of pydantic's errors into it.

Users read these messages at launch time, so each problem is one line `field.path: message`
(docs/architecture.md [conv-one-line-errors]), never a pydantic dump with URLs and error-type codes.

A section chosen by a tag (`algo`, by `algo.name`) is a discriminated union: pydantic puts the tag
into the error location (`algo.dcpo.eps_low`); the messages drop it and say which method was meant.
"""
from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass, field
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


def union_members(annotation: Any) -> dict[str, type[BaseModel]]:
    """{tag: model} of a discriminated union of sections tagged by `name` ({} for anything else)."""
    members = {}
    for arg in typing.get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel) and "name" in arg.model_fields:
            members[str(arg.model_fields["name"].default)] = arg
    return members


def _step(model: type[BaseModel], part: Any) -> tuple[type[BaseModel] | None, dict[str, type[BaseModel]]]:
    """The section below `model.part` (None if it is a value), and its union members if tagged."""
    info = model.model_fields.get(part) if isinstance(part, str) else None
    sub = getattr(info, "annotation", None) if info else None
    if isinstance(sub, type) and issubclass(sub, BaseModel):
        return sub, {}
    members = union_members(sub)
    if not members:  # an optional section: `Model | None`
        models = [a for a in typing.get_args(sub) if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(models) == 1 and type(None) in typing.get_args(sub):
            return models[0], {}
    return None, members


@dataclass
class _Walk:
    loc: list[Any]  # the location without union tags
    section: type[BaseModel] | None  # the section reached (None: a value, or unknown)
    tag: str | None = None  # the tag of the last tagged union passed
    members: dict[str, type[BaseModel]] = field(default_factory=dict)  # that union's members


def walk(root: type[BaseModel], loc: Sequence[Any]) -> _Walk:
    """Follow an error location from `root`, stepping through union tags."""
    out = _Walk([], root)
    parts = list(loc)
    i = 0
    while i < len(parts):
        out.loc.append(parts[i])
        sub, members = _step(out.section, parts[i]) if out.section is not None else (None, {})
        if members and i + 1 < len(parts) and parts[i + 1] in members:
            out.tag, out.members = parts[i + 1], members
            sub = members[out.tag]
            i += 1
        out.section = sub
        i += 1
    return out


def section_at(root: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model class reached by following `loc` (field names and union tags) from `root`."""
    return walk(root, loc).section


def section_keys(model: type[BaseModel], part: str) -> tuple[bool, dict[str, type[BaseModel]]]:
    """(is `model.part` a sub-section, the members of that section if it is a tagged union)."""
    sub, members = _step(model, part)
    return (sub is not None or bool(members)), members


def unknown_key_message(root: type[BaseModel], loc: Sequence[Any]) -> str:
    """'algo.eps_lo: unknown key; did you mean algo.eps_low?' (or the list of valid keys), and for a
    tagged section 'algo.ratio_cap: not a setting of algo.name=grpo (used by: dcpo); ...'."""
    parent_loc, key = loc[:-1], str(loc[-1])
    w = walk(root, parent_loc)
    parent, section, tag = w.loc, w.section, w.tag
    here = format_loc(list(parent) + [key])
    prefix = format_loc(parent) + "." if parent else ""
    if section is None:
        return f"{here}: unknown key"
    if tag is not None:
        hint = getattr(section, "refused_hints", {}).get(key)
        if hint:
            return f"{here}: not a setting of {prefix}name={tag}: {hint}"
        users = [t for t, m in w.members.items() if key in m.model_fields]
        if users:
            return (f"{here}: not a setting of {prefix}name={tag} (only of {', '.join(users)}); "
                    f"{tag}'s settings: {', '.join(k for k in section.model_fields if k != 'name')}")
    close = suggest(key, section.model_fields)
    if close:
        return f"{here}: unknown key; did you mean {', '.join(prefix + c for c in close)}?"
    where = format_loc(parent) if parent else "the top level"
    return f"{here}: unknown key; valid keys in {where}: {', '.join(section.model_fields)}"


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
        clean = walk(root, loc).loc
        if e["type"] == "union_tag_invalid":
            ctx = e.get("ctx") or {}
            tags = str(ctx.get("expected_tags", "")).replace("'", "")
            lines.append(f"{format_loc(list(clean) + [ctx.get('discriminator', 'name').strip(chr(39))])}: "
                         f"{ctx.get('tag')!r} is not one of {tags}")
            continue
        msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        value = e.get("input")
        got = f" (got {_short(value)})" if not isinstance(value, (dict, list, BaseModel)) else ""
        lines.append(f"{format_loc(clean)}: {msg}{got}")
    return ConfigError(lines)
