"""Held-out accuracy split by kind of question (sums vs products), for the demo's summary.

The training set is 91% sums (there are only 810 distinct products), and so is the random held-out split;
the demo's second held-out set is half products. The pretrained model answers almost no product, and RL
does not change that. Overall accuracy hides it; this split shows where a gain comes from (README, "The
CPU demo"). Greedy decoding in transformers, graded by the same verifier as training, on the exported HF
models.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

__all__ = ["accuracy_by_kind", "load_hf_model", "question_kind"]


def question_kind(question: str) -> str:
    return "multiplication" if "*" in question else "addition"


def load_hf_model(hf_dir: str | Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()


def accuracy_by_kind(model, tokenizer, records: Sequence, max_new_tokens: int,
                     verifier: str = "math") -> dict[str, float]:
    """{"all": acc, "addition": acc, "multiplication": acc, "n_addition": n, "n_multiplication": n} of an HF
    causal LM (or anything :func:`.greedy.greedy_generate` can drive) on PromptRecord-like ``records``."""
    import torch

    from dcpo_mcore.reward import get_verifier

    from .greedy import greedy_grades

    with torch.no_grad():
        grades, _ = greedy_grades(model, tokenizer, records, get_verifier(verifier), max_new_tokens)
    kinds = [question_kind(tokenizer.decode(r.prompt_ids)) for r in records]
    out: dict[str, float] = {"all": sum(g.correct for g in grades) / max(1, len(records))}
    for kind in ("addition", "multiplication"):
        hits = [g.correct for g, k in zip(grades, kinds) if k == kind]
        out[kind] = sum(hits) / len(hits) if hits else float("nan")
        out[f"n_{kind}"] = len(hits)
    return out
