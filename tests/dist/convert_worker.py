"""Rank-side checks of dcpo_mcore.convert.rank_ops: load converted checkpoints at other layouts.

Run through tests/dist/launcher.py. Every case rebuilds megatron's parallel state at its own layout
(world size 2: TP2, PP2, PP2 x VPP2, or TP1 with two data-parallel replicas), loads a checkpoint,
and reports the log-probs (from the last stage's TP rank 0), the exported HF tensors (from rank 0)
and whether the vocabulary padding rows this rank holds are all zero. Nothing is asserted here.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from dcpo_mcore.convert.hf_io import HfWeights
from dcpo_mcore.convert.rank_ops import (Model, export_to_sink, forward_logprobs, load_checkpoint, load_from_hf,
                                         save_checkpoint)
from dcpo_mcore.engine.hf_arch import ArchSpec
from dcpo_mcore.engine.layout import ParallelLayout
from dcpo_mcore.engine.parallel import init_model_parallel


def run_cases(cases: list[dict]) -> list[dict]:
    """Each case: {"config": HF config dir, "layout": [tp, pp, vpp], "ckpt": dir to load, "ids": token ids
    for the log-probs} or, to write a checkpoint first, {"config", "layout", "hf": HF dir, "save": dir}."""
    return [_case(c) for c in cases]


def _case(case: dict) -> dict:
    layout = ParallelLayout(*case["layout"])
    init_model_parallel(layout, seed=0)
    arch = ArchSpec.from_hf_config(case["config"])
    model = Model(arch, layout, torch.float32)
    if "save" in case:
        with HfWeights(case["hf"]) as weights:
            load_from_hf(model, weights.get)
        if dist.get_rank() == 0:
            import os

            os.makedirs(case["save"], exist_ok=True)
        dist.barrier()
        save_checkpoint(model, case["save"])
        return {"saved": True}
    load_checkpoint(model, case["ckpt"])
    out = {"padding_zero": _padding_rows_zero(model), "vocab_rows": _vocab_rows(model)}
    exported: dict[str, torch.Tensor] = {}
    export_to_sink(model, (lambda n, t: exported.__setitem__(n, t.clone())) if dist.get_rank() == 0 else None)
    out["exported"] = exported if dist.get_rank() == 0 else None
    out["logprobs"] = forward_logprobs(model, torch.tensor(case["ids"]))
    return out


def _vocab_rows(model: Model) -> int | None:
    for chunk in model.chunks:
        if chunk.pre_process:
            return chunk.embedding.word_embeddings.weight.shape[0] * model.tp
    return None


def _padding_rows_zero(model: Model) -> bool:
    """Rows past the real vocabulary in this rank's embedding / output-layer shard are all zero."""
    ok = True
    V = model.arch.vocab_size
    for chunk in model.chunks:
        weights = []
        if chunk.pre_process:
            weights.append(chunk.embedding.word_embeddings.weight)
        if chunk.post_process and not (model.arch.tie_word_embeddings and chunk.pre_process):
            weights.append(chunk.output_layer.weight)
        for w in weights:
            per = w.shape[0]
            lo = model.tp_rank * per
            pad_from = max(0, V - lo)  # first local row that is padding
            if pad_from < per:
                ok = ok and bool((w[pad_from:] == 0).all())
    return ok
