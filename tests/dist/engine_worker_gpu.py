"""GPU-only rank-side checks of the policy engine (Transformer Engine spec, bf16, FP8).

Run through tests/dist/launcher.py with backend="nccl" on a machine with CUDA and Transformer Engine;
test_engine_gpu.py is marked ``gpu`` and skipped elsewhere.
"""
from __future__ import annotations

import math

import torch

from dcpo_mcore.engine.batching import BatchSettings
from dcpo_mcore.engine.layout import ParallelLayout, Precision
from dcpo_mcore.engine.optimizer import OptimSettings
from tests.dist.engine_worker import _noisy_old, dcpo_loss_spec, hf_reference_logprobs, make_samples


def _engine(hf_dir: str, *, want_te: bool, precision: Precision, packed: bool = False, trainable: bool = False,
            layout: dict | None = None):
    from dcpo_mcore.engine.policy import EngineSettings, PolicyEngine

    # FP8 GEMMs need token counts that are multiples of 16.
    batching = BatchSettings(micro_batch_size=4, packed=packed, pad_to_multiple=16)
    settings = EngineSettings(layout=ParallelLayout(**(layout or {})), precision=precision, batching=batching,
                              optim=OptimSettings(lr=1e-4), want_te=want_te, trainable=trainable)
    return PolicyEngine.from_hf(hf_dir, settings, dcpo_loss_spec() if trainable else None)


def te_vs_local_bf16(hf_dir: str, vocab: int) -> dict:
    """bf16 log-probs of the TE spec (padded and packed/thd) and of the local spec, vs the fp32 HF model."""
    samples = make_samples(5, 16, vocab)
    ref = hf_reference_logprobs(hf_dir, samples)  # before the engine: float32 on CPU
    bf16 = Precision(params_dtype=torch.bfloat16)
    out = {}
    for name, kwargs in {"te": {"want_te": True}, "te_packed": {"want_te": True, "packed": True},
                         "local": {"want_te": False}}.items():
        engine = _engine(hf_dir, precision=bf16, **kwargs)
        got = engine.compute_logprobs(samples).logprobs
        out[name] = {"uses_te": engine.uses_te, "logprobs": [g.cpu() for g in got]}
        del engine
    diffs = {}
    for name in out:
        d = torch.cat([(a - b).abs() for a, b in zip(out[name]["logprobs"], ref)])
        diffs[f"{name}_vs_hf"] = (float(d.max()), float(d.mean()))
    d = torch.cat([(a - b).abs() for a, b in zip(out["te"]["logprobs"], out["local"]["logprobs"])])
    diffs["te_vs_local"] = (float(d.max()), float(d.mean()))
    return {"uses_te": {k: v["uses_te"] for k, v in out.items()}, "diffs": diffs}


def fp8_train_step(hf_dir: str, vocab: int, fp8: str = "hybrid", recipe: str = "delayed") -> dict:
    """One FP8 (TE) forward + backward + optimizer step; returns the metrics and whether weights moved."""
    engine = _engine(hf_dir, want_te=True, trainable=True,
                     precision=Precision(params_dtype=torch.bfloat16, fp8=fp8, fp8_recipe=recipe))
    samples = make_samples(6, 16, vocab)
    for s, old in zip(samples, _noisy_old(engine.compute_logprobs(samples).logprobs, 3, 0.5)):
        s.old_logprobs = old
    before = [p.detach().float().clone() for c in engine.chunks for p in c.parameters()]
    metrics = engine.train_step(samples, group_size=4)
    moved = any(not torch.equal(a, p.detach().float()) for a, p in
                zip(before, (p for c in engine.chunks for p in c.parameters())))
    return {"uses_te": engine.uses_te, "metrics": metrics, "moved": moved,
            "finite": math.isfinite(metrics["loss/total"]) and math.isfinite(metrics["loss/grad_norm"])}
