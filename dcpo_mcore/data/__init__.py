"""Prompt data: DCPO parquet/JSONL files -> validated, keyed, tokenised prompts -> resumable batches.

Public API
----------
``load_prompt_dataset(files, tokenizer, *, prompt_key, on_bad_row, chat_template, max_prompt_tokens,
dedup_replicas) -> PromptDataset``
    Reads the docs/algorithm.md [data-layout] layout, validates every row (``on_bad_row``: "error" raises a one-line
    :class:`DataError` naming file, row, problem and fix; "skip" counts the row per reason in the
    :class:`LoadReport`), keys each prompt (``"<data_source>:<index>"`` or ``"sha1:<16 hex>"``),
    collapses identical replicas (or keeps them), refuses conflicting duplicates, renders the chat
    template, tokenises, and drops over-long prompts (counted). Nothing disappears unaccounted:
    ``rows_read == rows_kept + skipped + collapsed + too_long``.
``PromptCursor(num_items, batch_size, shuffle=True, seed=0)``
    ``next_batch()`` gives distinct dataset indices, epoch after epoch with no drop; the order
    depends only on (seed, epoch), and ``state_dict()`` (plain JSON) resumes it exactly.
``render_prompt(tokenizer, messages, mode)`` / ``encode_prompts(tokenizer, texts)``
    The chat-template and tokenisation rules the loader uses (ids without added special tokens).
``make_arithmetic_task(out_dir, *, seed, n_train, n_eval, system_prompt=None, n_eval_balanced=0)``,
``arith_alphabet()``
    The CPU demo's synthetic addition/multiplication task in the same file layout: train, an i.i.d.
    held-out split, and optionally a harder held-out set that is half products.

This package imports neither torch.distributed nor megatron (docs/architecture.md [conv-no-dist-in-data]):
every rank can load the prompts on its own, or rank 0 can load and broadcast the indices the cursor yields.
"""
from .cursor import PromptCursor
from .dataset import BAD_ROW_POLICIES, PROMPT_KEY_MODES, PromptDataset, load_prompt_dataset, make_prompt_key
from .readers import SUPPORTED_EXTENSIONS
from .records import BAD_ROW_REASONS, DataError, LoadReport, PromptRecord
from .synthetic import (ARITH_BALANCED_DATA_SOURCE, ARITH_DATA_SOURCE, DCPO_SYSTEM_PROMPT, arith_alphabet,
                        arith_questions, make_arithmetic_task)
from .template import CHAT_TEMPLATE_MODES, TemplateRenderError, encode_prompts, render_prompt

__all__ = [
    "ARITH_BALANCED_DATA_SOURCE", "ARITH_DATA_SOURCE", "BAD_ROW_POLICIES", "BAD_ROW_REASONS", "CHAT_TEMPLATE_MODES",
    "DCPO_SYSTEM_PROMPT", "DataError", "LoadReport", "PROMPT_KEY_MODES", "PromptCursor", "PromptDataset",
    "PromptRecord",
    "SUPPORTED_EXTENSIONS", "TemplateRenderError", "arith_alphabet", "arith_questions", "encode_prompts",
    "load_prompt_dataset", "make_arithmetic_task", "make_prompt_key", "render_prompt",
]
