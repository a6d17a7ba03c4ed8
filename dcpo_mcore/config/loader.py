"""From a YAML file and `key=value` overrides to a validated TrainConfig, and back to disk.

Overrides are applied to the raw mapping *before* validation, so a value given on the command
line is validated exactly like the same value in the file, and the per-algorithm defaults see the
final `algo.name`. Relative paths inside a config are relative to the working directory (the
launcher's), not to the YAML file.
"""
from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError, format_loc, from_validation_error, section_at, section_keys, suggest
from .schema import TrainConfig

RESOLVED_NAME = "config.yaml"


class _StrictLoader(yaml.SafeLoader):
    """safe_load that rejects duplicate keys: PyYAML keeps the last one silently, hiding typos."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = getattr(exc, "problem", None) or str(exc).replace("\n", " ")
        raise ConfigError(f"{where}: YAML syntax error: {what}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, rollout:, "
                          f"algo:, ...), got a {type(data).__name__}")
    return data


def _check_override_key(item: str, parts: list[str]) -> str | None:
    """None if `parts` names a config field, else a one-line problem with close matches.

    Below a tagged section (`algo`) a key of any member passes here: which member applies depends
    on the final `algo.name`, and validation then refuses a key that member does not have."""
    fields: Iterable[str] = TrainConfig.model_fields
    model: type[BaseModel] | None = TrainConfig
    for i, part in enumerate(parts):
        if part not in fields:
            path = format_loc(parts[: i + 1])
            prefix = format_loc(parts[:i]) + "." if i else ""
            close = suggest(part, fields)
            hint = (f"; did you mean {', '.join(prefix + c for c in close)}?" if close
                    else f"; valid keys: {', '.join(prefix + k for k in fields)}")
            return f"override {item!r}: unknown key {path}{hint}"
        if i == len(parts) - 1:
            return None
        is_section, members = section_keys(model, part) if model is not None else (False, {})
        if not is_section:
            return f"override {item!r}: {format_loc(parts[: i + 1])} is a value, not a section"
        if members:
            fields = list(dict.fromkeys(k for m in members.values() for k in m.model_fields))
            model = None  # one level of tagged settings: their values are not sections
        else:
            model = section_at(model, [part])
            fields = model.model_fields
    return None


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of `data` with dotted `key=value` overrides applied (values parsed as YAML)."""
    out = copy.deepcopy(dict(data))
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            problems.append(f"override {item!r}: expected dotted.key=value, e.g. algo.eps_low=0.2")
            continue
        problem = _check_override_key(item, parts)
        if problem:
            problems.append(problem)
            continue
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problems.append(f"override {item!r}: value is not valid YAML ({getattr(exc, 'problem', exc)})")
            continue
        node = out
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                problems.append(f"override {item!r}: {part} in the config file is not a mapping")
                break
            node = node[part]
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems)
    return out


def validate_config(data: Mapping[str, Any]) -> TrainConfig:
    """Build a TrainConfig from a plain mapping; every problem becomes one ConfigError."""
    try:
        return TrainConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise from_validation_error(exc, TrainConfig) from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """YAML file (or all defaults if None), then dotted overrides, then validation."""
    if isinstance(overrides, str):  # a lone "a.b=c" would otherwise be iterated character by character
        overrides = [overrides]
    data = _read_yaml(Path(path)) if path is not None else {}
    return validate_config(apply_overrides(data, overrides))


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain, YAML/JSON-safe nested dict of the fully resolved config."""
    return cfg.model_dump(mode="json")


def save_resolved_config(cfg: TrainConfig, run_dir: str | Path) -> Path:
    """Write `run_dir/config.yaml` atomically; `load_config(that_file)` gives back an equal config."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / RESOLVED_NAME
    body = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
    header = ("# Resolved dcpo-mcore config: every default, including the per-algorithm ones, is "
              "written out.\n# Reproduce the run with: load_config('<this file>').\n")
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".config.", suffix=".yaml")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(header + body)
        os.replace(tmp, target)  # a crash mid-write never leaves a truncated config behind
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
