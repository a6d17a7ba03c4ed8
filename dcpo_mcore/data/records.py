"""The data room's value types: one prompt, the load report, and the one exception.

Kept apart from the readers so the trainer, the rollout and the checkpoint can import the types
without pulling in pyarrow or a tokenizer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dcpo_mcore.errors import UserError

__all__ = ["BAD_ROW_REASONS", "DataError", "LoadReport", "PromptRecord"]

# Every reason a row can be refused for. Under data.on_bad_row=skip each one has its own counter in
# LoadReport.skipped_by_reason, so nothing is dropped without a trace.
BAD_ROW_REASONS = (
    "bad_json",               # a JSONL line that is not a JSON object
    "missing_prompt",         # no `prompt`, or an empty one
    "bad_prompt",             # `prompt` is not a string / list of {role: str, content: str}, or cannot be rendered
    "missing_ground_truth",   # no `reward_model.ground_truth`, or an empty one
    "bad_ground_truth",       # ground truth is not a string or a list of strings
    "missing_index",          # no `extra_info.index` while data.prompt_key=source_index
    "bad_index",              # `extra_info.index` is not an int or a non-empty string
    "missing_data_source",    # no `data_source`, or an empty one
    "bad_data_source",        # `data_source` is not a string
    "conflicting_duplicate",  # same key as an earlier row, but a different prompt or answer
)


class DataError(UserError, ValueError):
    """Every dataset problem the user must fix. ``str()`` is always one line: cause and fix.

    Newlines in the message (for example from an exception text quoted in it) are folded into
    spaces, so a launcher's log shows the whole problem on the line it fails on
    (docs/architecture.md [conv-one-line-errors]).
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class PromptRecord:
    """One training or evaluation prompt, ready for rollout.

    key          -- identity of the prompt: SAS statistics and eval grouping are keyed by it
                    ("<data_source>:<index>" or "sha1:<16 hex>", see ``load_prompt_dataset``).
    messages     -- the chat messages as read (each a dict with at least role and content).
    prompt_text  -- the messages rendered by the chat template (or joined, chat_template=none).
    prompt_ids   -- ``prompt_text`` tokenised without added special tokens; send these ids to the
                    rollout engine so trainer and engine see exactly the same prompt tokens.
    ground_truth -- the reference answer handed to the verifier.
    data_source  -- the dataset name from the file (per-source eval metrics use it).
    index        -- ``extra_info.index`` as a string ("" when absent under prompt_key=prompt_hash).
    """

    key: str
    messages: list[dict]
    prompt_text: str
    prompt_ids: list[int]
    ground_truth: str
    data_source: str
    index: str


@dataclass
class LoadReport:
    """What happened to every row read, so a skipped or filtered row is always accounted for.

    Invariant: ``rows_read == rows_kept + sum(skipped_by_reason.values()) + collapsed + too_long``.

    duplicates -- rows that repeat an earlier key with the identical prompt and answer (replicas,
                  e.g. the 32 copies per problem of the shipped AIME/AMC files), counted whether or
                  not they were collapsed.
    collapsed  -- replica rows removed because dedup_replicas was on (0 otherwise).
    too_long   -- records removed because the prompt exceeded max_prompt_tokens (counted after
                  collapsing, so one over-long problem with 32 replicas counts 1 under dedup).
    rows_by_file -- rows read per file, in load order.
    examples   -- the first problem message per skip reason, for the log.
    """

    rows_read: int = 0
    rows_kept: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    too_long: int = 0
    duplicates: int = 0
    collapsed: int = 0
    rows_by_file: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        return sum(self.skipped_by_reason.values())

    def count_skip(self, reason: str, message: str) -> None:
        self.skipped_by_reason[reason] = self.skipped_by_reason.get(reason, 0) + 1
        self.examples.setdefault(reason, message)

    def is_consistent(self) -> bool:
        """The accounting invariant above; a loader bug that loses rows makes this False."""
        return self.rows_read == self.rows_kept + self.skipped + self.collapsed + self.too_long

    def summary(self) -> str:
        """One log line, e.g. ``read 960 rows -> kept 30 (collapsed 930 replicas, too long 0, skipped 0)``."""
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped_by_reason.items()))
        skipped = f"skipped {self.skipped}" + (f" [{reasons}]" if reasons else "")
        return (f"read {self.rows_read} rows -> kept {self.rows_kept} (collapsed {self.collapsed} replicas, "
                f"too long {self.too_long}, {skipped})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy, for the run directory and metrics."""
        return {"rows_read": self.rows_read, "rows_kept": self.rows_kept, "skipped": self.skipped,
                "skipped_by_reason": dict(self.skipped_by_reason), "too_long": self.too_long,
                "duplicates": self.duplicates, "collapsed": self.collapsed,
                "rows_by_file": dict(self.rows_by_file), "examples": dict(self.examples)}
