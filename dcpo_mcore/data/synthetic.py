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

__all__ = ["ARITH_BALANCED_DATA_SOURCE", "ARITH_DATA_SOURCE", "DCPO_SYSTEM_PROMPT", "arith_alphabet", "arith_questions",
           "make_arithmetic_task"]

ARITH_DATA_SOURCE = "synthetic_arith"
ARITH_BALANCED_DATA_SOURCE = "synthetic_arith_balanced"
_N_PRODUCTS = 9 * 90
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
                         system_prompt: str | None = None, n_eval_balanced: int = 0) -> tuple[Path, ...]:
    """Write ``train.parquet`` and ``eval.parquet`` under ``out_dir``; return their paths.

    ``eval`` is an i.i.d. held-out split: drawn at random from the same pool as ``train`` (so about 91%
    sums, like the 8100 sums among the 8910 questions). ``n_eval_balanced > 0`` also writes
    ``eval_balanced.parquet`` (returned third): half sums, half products, drawn before the other two, a
    harder set that shows how much of a gain reaches the products (train holds only ~9% of them). Its rows
    have ``data_source`` :data:`ARITH_BALANCED_DATA_SOURCE`, so in-training evaluation reports it apart.

    Deterministic in (seed, sizes, system_prompt). No two files share a question. ``extra_info.index`` runs
    0..n_train-1 in train and continues through eval, then eval_balanced, so keys stay unique even if the
    files are loaded together. ``system_prompt`` (e.g. :data:`DCPO_SYSTEM_PROMPT`) adds a system message
    before the user question; None (default) gives the question alone, which suits
    ``data.chat_template=none`` with a tiny model.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    pool = arith_questions(seed)
    sizes = (("n_train", n_train, 1), ("n_eval", n_eval, 1), ("n_eval_balanced", n_eval_balanced, 0))
    for name, value, least in sizes:
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            kind = "a positive" if least else "a non-negative"
            raise DataError(f"make_arithmetic_task {name} must be {kind} int, not {value!r}")
    if n_eval_balanced % 2 or n_eval_balanced > 2 * _N_PRODUCTS:
        raise DataError(f"make_arithmetic_task n_eval_balanced must be even and at most {2 * _N_PRODUCTS}, "
                        f"not {n_eval_balanced}")
    if n_train + n_eval + n_eval_balanced > len(pool):
        raise DataError(f"n_train + n_eval + n_eval_balanced = {n_train + n_eval + n_eval_balanced} exceeds the "
                        f"{len(pool)} distinct arithmetic questions; ask for fewer")
    balanced = pool[:n_eval_balanced]  # the pool starts by alternating sums and products
    rest = pool[n_eval_balanced:]
    random.Random(f"{seed}:iid-split").shuffle(rest)  # a random split of what is left: eval ~ train
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = [("train", rest[n_eval:n_eval + n_train], 0, ARITH_DATA_SOURCE),
              ("eval", rest[:n_eval], n_train, ARITH_DATA_SOURCE)]
    if n_eval_balanced:
        splits.append(("eval_balanced", balanced, n_train + n_eval, ARITH_BALANCED_DATA_SOURCE))
    paths = []
    for split, items, first_index, source in splits:
        rows = [prompt_row(q, a, first_index + i, split, system_prompt, source) for i, (q, a) in enumerate(items)]
        path = out / f"{split}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        paths.append(path)
    return tuple(paths)


def prompt_row(question: str, answer: str, index: int, split: str, system_prompt: str | None, source: str) -> dict:
    """One prompt row in the DCPO parquet layout (docs/algorithm.md [data-layout])."""
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt is not None else [])
    messages.append({"role": "user", "content": question})
    return {"data_source": source, "prompt": messages, "ability": "ARITH",
            "reward_model": {"ground_truth": answer, "style": "rule"},
            "extra_info": {"index": index, "raw_problem": question, "split": split}}


def arith_alphabet(system_prompt: str | None = None) -> str:
    """Sorted distinct characters of every question, every ``\\boxed{answer}`` and ``system_prompt``.

    For a character-level tokenizer in the demo: with these characters it can encode any prompt
    of the task and a boxed answer. Response prose beyond that (e.g. "The answer is") is not covered.
    """
    return "".join(sorted(set(_QUESTION_CHARS + _ANSWER_CHARS + (system_prompt or ""))))
