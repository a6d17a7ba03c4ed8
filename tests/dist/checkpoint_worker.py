"""Rank-side checks of dcpo_mcore.checkpoint with a real TP2 engine (tests/dist/test_checkpoint_engine.py).

Three launches share one directory ``root`` (tiny HF model in ``root/hf``, checkpoints in ``root/ckpt``):

1. :func:`save_and_reload` - step 1, save, record (weights, optimizer state, RNG draws, step 2); then in the
   same processes build a fresh engine, resume, and compare everything bit for bit.
2. :func:`killed_save` - a fresh job starts saving step 2 and is SIGKILLed right after the model files are
   written (before the RNG files, trainer state, manifest and rename).
3. :func:`resume_after_kill` - a fresh job auto-resumes: it must take step 1 and redo step 2 exactly.
"""
from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from dcpo_mcore.algo.sas import PromptStats, PromptStatsStore
from dcpo_mcore.checkpoint import CheckpointManager
from tests.dist.engine_worker import _engine, _noisy_old, _step_summary, make_samples

CFG = {"layout": {"tp": 2, "use_distributed_optimizer": True}, "batching": {"num_microbatches": 2}}


def _model(root: str) -> tuple[str, int]:
    """The tiny HF model, made once by rank 0 of the first launch (2 layers, tied embeddings)."""
    hf = Path(root) / "hf"
    if dist.get_rank() == 0 and not (hf / "config.json").exists():
        from dcpo_mcore.hf.tiny import make_tiny_hf_model

        make_tiny_hf_model("qwen3", hf, num_layers=2, tie_word_embeddings=True, seed=3)
    dist.barrier()
    return str(hf), json.loads((hf / "config.json").read_text())["vocab_size"]


def _fresh_engine(root: str):
    """A new engine from the HF weights plus the two mini-batches, with old log-probs of that initial
    policy (so every launch, and the reload, trains on exactly the same inputs)."""
    hf, vocab = _model(root)
    engine = _engine(hf, CFG)
    batches = [make_samples(60 + k, 8, vocab) for k in range(2)]
    flat = [s for b in batches for s in b]
    for s, old in zip(flat, _noisy_old(engine.compute_logprobs(flat).logprobs, 5, 0.7)):
        s.old_logprobs = old
    return engine, batches


def _trainer_state(step: int) -> dict:
    store = PromptStatsStore()
    store.set("q-1", PromptStats(step, 0.1 + 0.2, 1 / 3))
    store.set("q-2", PromptStats(1, -1e-300, 0.7071067811865476))
    return {"step": step, "weight_version": step, "sas": store.state_dict(), "data": {"cursor": 8 * step},
            "config": "parallel:\n  tp: 2\n"}


def _weights(engine) -> list[torch.Tensor]:
    return [t.detach().clone() for c in engine.chunks for k, t in c.module.state_dict().items()
            if not k.endswith("_extra_state")]


def _optimizer_state(engine) -> list[torch.Tensor]:
    """Main params and every Adam state tensor (step included), in param-group order."""
    from dcpo_mcore.engine.dist_ckpt import _sub_optimizers

    out = []
    for opt in _sub_optimizers(engine.optimizer):
        for group in opt.optimizer.param_groups:
            for p in group["params"]:
                st = opt.optimizer.state[p]
                out += [p.detach().clone()] + [torch.as_tensor(st[k]).clone() for k in sorted(st)]
    return out


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))


def _draws() -> dict:
    """Numbers from every generator the checkpoint restores (megatron's tracker via fork())."""
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    out = {"python": random.random(), "numpy": np.random.rand(2).tolist(), "torch": torch.rand(3).tolist()}
    with get_cuda_rng_tracker().fork():
        out["tracker"] = torch.rand(3).tolist()
    return out


def save_and_reload(root: str) -> dict:
    engine, batches = _fresh_engine(root)
    engine.train_step(batches[0], group_size=4)
    manager = CheckpointManager(Path(root) / "ckpt", keep_last=2)
    state = _trainer_state(1)
    path = manager.save(1, engine.save_checkpoint, state)
    weights, optim = _weights(engine), _optimizer_state(engine)
    draws = _draws()
    step2 = _step_summary(engine.train_step(batches[1], group_size=4))
    del engine

    engine, _ = _fresh_engine(root)  # a new engine of the HF weights (same samples objects reused below)
    differs_before_load = not _same(_weights(engine), weights)
    resume = manager.resolve_resume("auto")
    loaded = manager.load(resume, engine.load_checkpoint)
    result = {
        "path": str(path), "resume": str(resume), "rng_files": sorted(os.listdir(path / "rng")),
        "differs_before_load": differs_before_load, "weights_equal": _same(_weights(engine), weights),
        "optimizer_equal": _same(_optimizer_state(engine), optim), "steps_done": engine.steps_done,
        "state_equal": loaded == state and json.dumps(loaded) == json.dumps(state),
        "draws": draws, "draws_after_load": _draws(), "step2": step2,
        "step2_after_load": _step_summary(engine.train_step(batches[1], group_size=4)),
    }
    return result


def killed_save(root: str) -> None:
    """Start saving step 2 and die (SIGKILL: no cleanup code runs) once the model files are on disk."""
    engine, _ = _fresh_engine(root)

    def save_then_die(directory: Path) -> None:
        engine.save_checkpoint(directory)
        os.kill(os.getpid(), signal.SIGKILL)

    CheckpointManager(Path(root) / "ckpt", keep_last=2).save(2, save_then_die, _trainer_state(2))
    raise AssertionError("unreachable: the save should have killed this rank")


def resume_after_kill(root: str) -> dict:
    ckpt = Path(root) / "ckpt"
    leftovers_before = sorted(p.name for p in ckpt.iterdir() if p.name.startswith(".tmp-"))
    dist.barrier()  # every rank has looked before resolve_resume cleans up
    engine, batches = _fresh_engine(root)
    manager = CheckpointManager(ckpt, keep_last=2)
    resume = manager.resolve_resume("auto")
    loaded = manager.load(resume, engine.load_checkpoint)
    draws = _draws()
    return {"leftovers_before": leftovers_before, "resume": str(resume), "step": loaded["step"],
            "entries_after": sorted(p.name for p in ckpt.iterdir()), "draws": draws,
            "step2": _step_summary(engine.train_step(batches[1], group_size=4))}
