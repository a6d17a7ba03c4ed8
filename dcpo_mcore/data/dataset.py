"""Load prompt files into a :class:`PromptDataset`: validate, key, de-duplicate, render, tokenise, filter.

Keys (config ``data.prompt_key``; docs/algorithm.md [choice-prompt-key]: the authors' code keyed SAS state by
a bare ``extra_info.index`` that defaults to 0 and collides across merged files):

* ``source_index`` -- ``f"{data_source}:{extra_info.index}"``; readable, stable if the text is edited.
* ``prompt_hash``  -- ``"sha1:" + sha1(rendered prompt text)[:16]`` (64 bits); for files without a
  trustworthy index. Identical prompts from two sources then share one key (the first row's
  data_source and index are kept).

Duplicate keys, over ALL files loaded together:

* identical replicas (same rendered prompt and same ground truth) are legitimate -- the shipped
  AIME/AMC eval files hold 32 copies of every problem for Avg@32 (docs/algorithm.md [data-eval-sets]).
  ``dedup_replicas=True`` collapses them into the first row (training: one SAS key, one record per problem);
  ``dedup_replicas=False`` keeps every row. Either way ``PromptDataset.replica_counts[key]`` says
  how many rows the problem had, so evaluation can draw that many samples per unique prompt.
* a duplicate key whose prompt or answer DIFFERS means two problems would share one identity
  (SAS statistics would silently merge): ``on_bad_row=error`` stops with both locations,
  ``skip`` keeps the first row and counts the later one as ``conflicting_duplicate``.

Order of the records = order of first appearance (files in the order given, rows in file order).
Prompts longer than ``max_prompt_tokens`` are dropped after collapsing and counted as ``too_long``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from .readers import BadRow, ParsedRow, RawRow, iter_rows, parse_row
from .records import DataError, LoadReport, PromptRecord
from .template import TemplateRenderError, check_chat_template, encode_prompts, render_prompt

__all__ = ["BAD_ROW_POLICIES", "PROMPT_KEY_MODES", "PromptDataset", "load_prompt_dataset", "make_prompt_key"]

PROMPT_KEY_MODES = ("source_index", "prompt_hash")
BAD_ROW_POLICIES = ("error", "skip")


@dataclass
class PromptDataset:
    """The loaded prompts plus the account of how they were obtained.

    ``replica_counts[key]`` = rows the problem had in the files (32 for a shipped AIME problem,
    1 for MATH500), whether or not the replicas were collapsed.
    """

    records: list[PromptRecord]
    report: LoadReport
    replica_counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> PromptRecord:
        return self.records[i]

    def __iter__(self) -> Iterator[PromptRecord]:
        return iter(self.records)

    @property
    def keys(self) -> list[str]:
        return [r.key for r in self.records]


def make_prompt_key(mode: str, *, data_source: str, index: str, prompt_text: str) -> str:
    """The prompt's identity under ``mode`` (see the module docstring)."""
    if mode == "source_index":
        return f"{data_source}:{index}"
    if mode == "prompt_hash":
        return "sha1:" + hashlib.sha1(prompt_text.encode("utf-8")).hexdigest()[:16]
    raise DataError(f"unknown prompt_key mode {mode!r}; set data.prompt_key to one of {', '.join(PROMPT_KEY_MODES)}")


def load_prompt_dataset(
    files: str | Path | Sequence[str | Path], tokenizer: Any, *, prompt_key: str = "source_index",
    on_bad_row: str = "error", chat_template: str = "tokenizer", max_prompt_tokens: int | None = None,
    dedup_replicas: bool = True,
) -> PromptDataset:
    """Read ``files`` (one path or several) into a PromptDataset; see the module docstring for keys,
    duplicates and filtering. Raises DataError (one line: file, row, problem, fix) for a bad file,
    a bad row under ``on_bad_row="error"``, or when no usable prompt is left."""
    paths = [files] if isinstance(files, (str, Path)) else list(files)
    _check_options(paths, prompt_key, on_bad_row, max_prompt_tokens)
    check_chat_template(tokenizer, chat_template)
    builder = _Builder(tokenizer, prompt_key, on_bad_row, chat_template, dedup_replicas)
    for path in paths:
        builder.add_file(path)
    return builder.finish(max_prompt_tokens, paths)


def _check_options(paths: list, prompt_key: str, on_bad_row: str, max_prompt_tokens: int | None) -> None:
    if not paths:
        raise DataError("no data files given; list .parquet or .jsonl files in data.train_files / data.eval_files")
    if prompt_key not in PROMPT_KEY_MODES:
        raise DataError(f"unknown prompt_key {prompt_key!r}; set data.prompt_key to one of {', '.join(PROMPT_KEY_MODES)}")
    if on_bad_row not in BAD_ROW_POLICIES:
        raise DataError(f"unknown on_bad_row {on_bad_row!r}; set data.on_bad_row to one of {', '.join(BAD_ROW_POLICIES)}")
    if max_prompt_tokens is not None and (isinstance(max_prompt_tokens, bool) or not isinstance(max_prompt_tokens, int)
                                          or max_prompt_tokens < 1):
        raise DataError(f"max_prompt_tokens must be a positive int or None, not {max_prompt_tokens!r}; "
                        "fix rollout.max_prompt_tokens")


@dataclass(frozen=True)
class _First:
    """Where a key was first seen and what it meant there (to tell replicas from conflicts)."""

    prompt_text: str
    ground_truth: str
    file: str
    where: str


class _Builder:
    """Accumulates rows over files; the only holder of mutable load state."""

    def __init__(self, tokenizer: Any, prompt_key: str, on_bad_row: str, chat_template: str, dedup: bool):
        self.tokenizer, self.prompt_key, self.on_bad_row = tokenizer, prompt_key, on_bad_row
        self.chat_template, self.dedup = chat_template, dedup
        self.report = LoadReport()
        self.seen: dict[str, _First] = {}
        self.replica_counts: dict[str, int] = {}
        self.pending: list[tuple[str, ParsedRow, str]] = []  # (key, row, prompt_text) awaiting tokenisation

    def add_file(self, path: str | Path) -> None:
        rows = iter_rows(path)  # file-level problems raise here, before any row is counted
        n = 0
        for raw in rows:
            n += 1
            self.report.rows_read += 1
            try:
                self._add_row(raw)
            except BadRow as bad:
                self._bad(raw, bad)
        self.report.rows_by_file[str(path)] = self.report.rows_by_file.get(str(path), 0) + n

    def _add_row(self, raw: RawRow) -> None:
        if raw.bad is not None:
            raise raw.bad
        parsed = parse_row(raw.data, need_index=self.prompt_key == "source_index")
        try:
            text = render_prompt(self.tokenizer, parsed.messages, self.chat_template)
        except TemplateRenderError as exc:
            raise BadRow("bad_prompt", str(exc)) from exc
        key = make_prompt_key(self.prompt_key, data_source=parsed.data_source, index=parsed.index, prompt_text=text)
        first = self.seen.get(key)
        if first is None:
            self.seen[key] = _First(text, parsed.ground_truth, raw.file, raw.where)
            self.replica_counts[key] = 1
        else:
            self._check_replica(key, first, text, parsed.ground_truth)
            self.report.duplicates += 1
            self.replica_counts[key] += 1
            if self.dedup:
                self.report.collapsed += 1
                return
        self.pending.append((key, parsed, text))

    def _check_replica(self, key: str, first: _First, text: str, ground_truth: str) -> None:
        """A repeated key is fine only for an identical replica; anything else is a conflict."""
        if text == first.prompt_text and ground_truth == first.ground_truth:
            return
        at = f"{first.file} {first.where}"
        if text != first.prompt_text:
            what = "prompt" + (" and answer" if ground_truth != first.ground_truth else "")
            fix = ("give each problem its own extra_info.index, or set data.prompt_key=prompt_hash"
                   if self.prompt_key == "source_index" else "remove one of the two rows (sha1 prefix collision)")
            raise BadRow("conflicting_duplicate", f"key {key!r} was already used at {at} for a different {what}; {fix}")
        raise BadRow("conflicting_duplicate", f"key {key!r} was already used at {at} with the same prompt but "
                     f"answer {_short(first.ground_truth)} instead of {_short(ground_truth)}; correct or remove one of the rows")

    def _bad(self, raw: RawRow, bad: BadRow) -> None:
        message = f"{raw.file} {raw.where}: {bad.problem}"
        if self.on_bad_row == "error":
            raise DataError(f"{message} (or set data.on_bad_row=skip to skip and count such rows)") from bad
        self.report.count_skip(bad.reason, message)

    def finish(self, max_prompt_tokens: int | None, paths: list) -> PromptDataset:
        texts = list(dict.fromkeys(text for _, _, text in self.pending))  # replicas are tokenised once
        ids_by_text = dict(zip(texts, encode_prompts(self.tokenizer, texts)))
        records = []
        for key, row, text in self.pending:
            ids = ids_by_text[text]
            if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
                self.report.too_long += 1
                self.replica_counts.pop(key, None)
                continue
            records.append(PromptRecord(key=key, messages=row.messages, prompt_text=text, prompt_ids=list(ids),
                                        ground_truth=row.ground_truth, data_source=row.data_source, index=row.index))
        self.report.rows_kept = len(records)
        if not self.report.is_consistent():  # a loader bug, never a user error
            raise RuntimeError(f"data loader lost rows: {self.report.to_dict()}")
        if not records:
            example = next(iter(self.report.examples.values()), "")
            raise DataError(f"no usable prompt in {', '.join(map(str, paths))}: {self.report.summary()}"
                            + (f"; first skipped row: {example}" if example else "")
                            + ("; raise rollout.max_prompt_tokens" if self.report.too_long else ""))
        return PromptDataset(records, self.report, self.replica_counts)


def _short(text: str) -> str:
    r = repr(text)
    return r if len(r) <= 40 else r[:37] + "..."
