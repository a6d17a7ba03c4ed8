"""Rank-side runs of the demo's pretraining stage (through tests/dist/launcher.py; the test asserts).

:func:`pretrain_checks` runs, on every rank of one launch, with the same small task:

* A: 20 steps from the random model, saving the HF directory and the megatron checkpoint;
* B: 10 more steps continuing from A (``init``: weights, Adam state, step count and data cursor);
* C: 30 steps from the random model in one go -- B must repeat C's steps 21..30 exactly;
* D: a target of 0 accuracy: must stop at the first evaluation;
* then B's saved HF directory is compared with an engine loaded from B's megatron checkpoint (the
  trained weights as the engine held them): response log-probs in transformers vs the engine.
"""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import torch


def _records(rows: list[dict]) -> list:
    return [SimpleNamespace(prompt_ids=r["prompt_ids"], ground_truth=r["ground_truth"]) for r in rows]


def pretrain_checks(hf_dir: str, work: str, train_rows: list[dict], eval_rows: list[dict], layout: dict) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dcpo_mcore.engine import collectives as comm
    from dcpo_mcore.demo.pretraining import MCORE_SUBDIR, NLL_LOSS, PretrainSettings, answer_ids, engine_settings, pretrain
    from dcpo_mcore.engine.batching import PolicySample
    from dcpo_mcore.engine.layout import ParallelLayout
    from dcpo_mcore.engine.policy import PolicyEngine

    train, held_out = _records(train_rows), _records(eval_rows)
    base = PretrainSettings(batch_size=16, micro_batch_size=8, target_accuracy=None, eval_every=10, max_steps=20,
                            max_seconds=None, max_new_tokens=12, seed=3, layout=ParallelLayout(**layout))
    a = pretrain(hf_dir, f"{work}/a", train, held_out, replace(base, save_mcore_checkpoint=True), log=None)
    b = pretrain(hf_dir, f"{work}/b", train, held_out, replace(base, max_steps=10, save_mcore_checkpoint=True),
                 init=f"{work}/a", log=None)
    c = pretrain(hf_dir, f"{work}/c", train, held_out, replace(base, max_steps=30), log=None)
    d = pretrain(hf_dir, f"{work}/d", train, held_out, replace(base, target_accuracy=0.0, eval_every=3, max_steps=50),
                 log=None)

    # The trained weights as the engine held them (B's megatron checkpoint) vs B's exported HF directory.
    engine = PolicyEngine.from_hf(f"{work}/b", engine_settings(base), NLL_LOSS)
    engine.load_checkpoint(f"{work}/b/{MCORE_SUBDIR}")
    tok = AutoTokenizer.from_pretrained(f"{work}/b")
    samples = [PolicySample(r.prompt_ids, answer_ids(tok, r.ground_truth)) for r in held_out[:8]]
    got = engine.compute_logprobs(samples, temperature=1.0).logprobs
    diff = None
    if comm.rank() == 0:
        model = AutoModelForCausalLM.from_pretrained(f"{work}/b", dtype=torch.float32).eval()
        diffs = []
        with torch.no_grad():
            for s, lp in zip(samples, got):
                ids = torch.tensor(list(s.prompt_ids) + list(s.response_ids)).unsqueeze(0)
                ref = torch.log_softmax(model(ids).logits[0].float(), -1)
                rows = torch.arange(len(s.response_ids)) + len(s.prompt_ids) - 1
                diffs.append(float((ref[rows, torch.tensor(list(s.response_ids))] - lp).abs().max()))
        diff = max(diffs)
    summary = lambda r: {"steps": r.steps, "total_steps": r.total_steps, "losses": r.losses,  # noqa: E731
                         "history": r.history, "stop_reason": r.stop_reason, "reached": r.reached_target,
                         "final_accuracy": r.final_accuracy}
    return {"a": summary(a), "b": summary(b), "c": summary(c), "d": summary(d), "hf_vs_engine": diff}
