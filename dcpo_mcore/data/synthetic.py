"""A synthetic arithmetic task in the DCPO file layout, for the CPU demo and tests.

Questions are "What is 37+58?" (two-digit + two-digit) and "What is 7*58?" (one-digit x two-digit),
the same surface form as the tiny BPE tokenizer's training corpus (``dcpo_mcore.hf.tiny``), so a tiny
model sees familiar tokens. The ground truth is the exact value as a string; a verifier checks
``\\boxed{...}`` in the response against it.

Why these ranges: 90*90 additions + 9*90 products = 8910 distinct questions, enough for disjoint
train/eval splits of a few thousand; a one-digit factor keeps products learnable by a tiny model.
"""
from __future__ import annotations

import random
from pathlib import Path

from .records import DataError

__all__ = ["ARITH_DATA_SOURCE", "DCPO_SYSTEM_PROMPT", "arith_alphabet", "arith_questions", "make_arithmetic_task"]

ARITH_DATA_SOURCE = "synthetic_arith"
DCPO_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
_QUESTION_CHARS = "What is 0123456789+*?"
_ANSWER_CHARS = "\\boxed{}0123456789"


def arith_questions(seed: int) -> list[tuple[str, str]]:
    """Every (question, answer) of the task, in a seeded order that alternates additions and
    products while both last (so any prefix mixes the two kinds), then the remaining additions."""
    rng = random.Random(seed)
    adds = [(f"What is {a}+{b}?", str(a + b)) for a in range(10, 100) for b in range(10, 100)]
    muls = [(f"What is {c}*{b}?", str(c * b)) for c in range(1, 10) for b in range(10, 100)]
    rng.shuffle(adds)
    rng.shuffle(muls)
    mixed = [q for pair in zip(adds, muls) for q in pair]
    return mixed + adds[len(muls):]


def make_arithmetic_task(out_dir: str | Path, *, seed: int, n_train: int, n_eval: int,
                         system_prompt: str | None = None) -> tuple[Path, Path]:
    """Write ``train.parquet`` and ``eval.parquet`` under ``out_dir``; return their paths.

    Deterministic in (seed, n_train, n_eval, system_prompt). The eval questions are drawn first and the
    train questions after them from the same shuffled pool, so the splits never share a question.
    ``extra_info.index`` runs 0..n_train-1 in train and continues n_train.. in eval, so keys stay unique
    even if both files are loaded together. ``system_prompt`` (e.g. :data:`DCPO_SYSTEM_PROMPT`) adds a
    system message before the user question; None (default) gives the question alone, which suits
    ``data.chat_template=none`` with a tiny model.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    pool = arith_questions(seed)
    for name, value in (("n_train", n_train), ("n_eval", n_eval)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"make_arithmetic_task {name} must be a positive int, not {value!r}")
    if n_train + n_eval > len(pool):
        raise DataError(f"n_train + n_eval = {n_train + n_eval} exceeds the {len(pool)} distinct arithmetic "
                        "questions; ask for fewer")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = (("train", pool[n_eval:n_eval + n_train], 0), ("eval", pool[:n_eval], n_train))
    paths = []
    for split, items, first_index in splits:
        rows = [_row(q, a, first_index + i, split, system_prompt) for i, (q, a) in enumerate(items)]
        path = out / f"{split}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        paths.append(path)
    return paths[0], paths[1]


def _row(question: str, answer: str, index: int, split: str, system_prompt: str | None) -> dict:
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt is not None else [])
    messages.append({"role": "user", "content": question})
    return {"data_source": ARITH_DATA_SOURCE, "prompt": messages, "ability": "ARITH",
            "reward_model": {"ground_truth": answer, "style": "rule"},
            "extra_info": {"index": index, "raw_problem": question, "split": split}}


def arith_alphabet(system_prompt: str | None = None) -> str:
    """Sorted distinct characters of every question, every ``\\boxed{answer}`` and ``system_prompt``.

    For a character-level tokenizer in the demo: with these characters it can encode any prompt
    of the task and a boxed answer. Response prose beyond that (e.g. "The answer is") is not covered.
    """
    return "".join(sorted(set(_QUESTION_CHARS + _ANSWER_CHARS + (system_prompt or ""))))
