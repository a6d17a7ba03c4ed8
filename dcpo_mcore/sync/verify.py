"""After a sync: do the servers compute what the trainer computes? (issue 4, "Verification")

A few fixed token sequences are scored twice: by the trainer's megatron forward (vocab-parallel
log-probs at temperature 1) and by each SGLang worker's prompt log-probs (``input_token_logprobs``
of a greedy request, i.e. the raw softmax). After a correct sync the two agree to float rounding
(about 1e-6 in float32); a missing or misplaced tensor shows up as a gap of 0.1 or more.
"""
from __future__ import annotations

import random
from typing import Sequence

import torch

from dcpo_mcore.rollout._http import request_json
from dcpo_mcore.rollout.errors import RequestRejected
from dcpo_mcore.rollout.wire import GenerateResponse

__all__ = ["default_threshold", "max_abs_diff", "server_prompt_logprobs", "verification_prompts"]


def verification_prompts(vocab_size: int, num: int, length: int, seed: int) -> list[list[int]]:
    """``num`` fixed random token sequences of ``length`` tokens (the same every sync and run)."""
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(length)] for _ in range(num)]


def server_prompt_logprobs(url: str, ids: Sequence[int], timeout_s: float = 120.0) -> list[float]:
    """SGLang's log-probs of ``ids[1:]`` given their prefixes (``input_token_logprobs``, first dropped)."""
    body = {"input_ids": list(ids), "return_logprob": True, "logprob_start_len": 0,
            "sampling_params": {"max_new_tokens": 1, "temperature": 0.0}}
    ans = request_json("POST", url, "/generate", body, timeout=timeout_s)
    if not ans.ok:
        raise RequestRejected(url, ans.status, f"/generate (verification): {ans.message()}")
    raw = ans.body[0] if isinstance(ans.body, list) else ans.body
    resp = GenerateResponse.from_wire(raw)
    if resp.input_logprobs is None or len(resp.input_logprobs) != len(ids):
        got = None if resp.input_logprobs is None else len(resp.input_logprobs)
        raise RequestRejected(url, ans.status, f"/generate (verification): expected {len(ids)} input logprobs, got {got}")
    return [float(v) for v in resp.input_logprobs[1:]]


def max_abs_diff(trainer: Sequence[torch.Tensor], server: Sequence[Sequence[float]]) -> float:
    worst = 0.0
    for t, s in zip(trainer, server, strict=True):
        worst = max(worst, float((t.double() - torch.tensor(s, dtype=torch.float64)).abs().max()))
    return worst


def default_threshold(trainer_dtype: torch.dtype, server_dtype: str | None) -> float:
    """Both sides float32: rounding only (measured ~1e-6), so 1e-3 leaves a wide margin and still
    catches any wrong tensor. Any bf16/fp16 side: per-token gaps of a few 0.01 are normal."""
    low = trainer_dtype != torch.float32 or (server_dtype not in (None, "float32", "torch.float32"))
    return 0.25 if low else 1e-3
