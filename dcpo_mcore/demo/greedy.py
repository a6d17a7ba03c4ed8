"""Fast held-out greedy evaluation for the pretraining stage: an HF mirror of the megatron policy.

:class:`HfMirror` keeps one ``transformers`` model of the policy's architecture in memory and refreshes its
weights from the engine with :func:`~dcpo_mcore.engine.hf_export.stream_hf_tensors` (the exact tensors the
checkpoint export and the SGLang weight sync move), so what is evaluated is what gets saved and served.
:func:`greedy_generate` decodes with a KV cache, batching prompts of equal length (the arithmetic prompts
come in two or three lengths, so no padding and no attention mask are needed and the result is exactly
per-prompt greedy decoding). Argmax runs over the model's whole vocabulary, as SGLang's greedy sampling does.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["HfMirror", "greedy_accuracy", "greedy_generate", "greedy_grades"]


class HfMirror:
    """An HF causal LM whose weights follow a :class:`~dcpo_mcore.engine.policy.PolicyEngine`.

    ``refresh(engine)`` is a collective over the engine's default group (every rank calls it); only
    global rank 0 holds the model (``self.model`` is None elsewhere).
    """

    def __init__(self, hf_dir: str | Path, is_rank0: bool):
        self.model = None
        if is_rank0:
            from transformers import AutoConfig, AutoModelForCausalLM

            config = AutoConfig.from_pretrained(str(hf_dir))
            self.model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()

    def refresh(self, engine) -> None:
        from dcpo_mcore.engine.hf_export import stream_hf_tensors

        state: dict[str, torch.Tensor] = {}
        sink = (lambda name, t: state.__setitem__(name, t)) if self.model is not None else None
        stream_hf_tensors(engine.chunks, engine.arch, engine.uses_te, sink)
        if self.model is None:
            return
        result = self.model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        tied = bool(getattr(self.model.config, "tie_word_embeddings", False))
        missing = [k for k in result.missing_keys if not (tied and k == "lm_head.weight")]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"HF mirror out of step with the export: missing {missing[:3]}, "
                               f"unexpected {result.unexpected_keys[:3]}")


@torch.no_grad()
def greedy_generate(model, prompts: Sequence[Sequence[int]], eos_id: int, max_new_tokens: int,
                    batch_size: int = 256) -> list[list[int]]:
    """Greedy continuation of every prompt (ids), up to and including eos, at most ``max_new_tokens``."""
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_len[len(p)].append(i)
    out: list[list[int]] = [[] for _ in prompts]
    for idx_all in by_len.values():
        for start in range(0, len(idx_all), batch_size):
            idx = idx_all[start:start + batch_size]
            ids = torch.tensor([list(prompts[i]) for i in idx], dtype=torch.long)
            done = torch.zeros(len(idx), dtype=torch.bool)
            gen = []
            res = model(input_ids=ids, use_cache=True)
            for _ in range(max_new_tokens):
                nxt = res.logits[:, -1].argmax(-1)
                gen.append(torch.where(done, torch.full_like(nxt, -1), nxt))
                done |= nxt == eos_id
                if bool(done.all()):
                    break
                res = model(input_ids=nxt.unsqueeze(1), past_key_values=res.past_key_values, use_cache=True)
            cols = torch.stack(gen, 1).tolist()
            for row, i in zip(cols, idx):
                out[i] = [t for t in row if t >= 0]
    return out


def greedy_grades(model, tokenizer, records, verifier, max_new_tokens: int) -> tuple[list, list[str]]:
    """Greedy answers to ``records`` (PromptRecord-like: prompt_ids, ground_truth), graded by ``verifier``
    (a :class:`dcpo_mcore.reward.Verifier`): one grade and one decoded response per record."""
    gens = greedy_generate(model, [r.prompt_ids for r in records], tokenizer.eos_token_id, max_new_tokens)
    texts = tokenizer.batch_decode(gens, skip_special_tokens=True)
    return verifier.grade_batch(zip(texts, (r.ground_truth for r in records))), texts


def greedy_accuracy(model, tokenizer, records, verifier, max_new_tokens: int) -> tuple[float, list[str]]:
    """Share of ``records`` answered correctly under greedy decoding; also the decoded responses."""
    grades, texts = greedy_grades(model, tokenizer, records, verifier, max_new_tokens)
    return sum(g.correct for g in grades) / max(1, len(records)), texts
