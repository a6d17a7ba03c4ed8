"""Checkpoints across layer specs (docs/gpu.md [ckpt-keys]), on CPU: Transformer Engine modules save an
``_extra_state`` entry that megatron's local modules lack. To get one without TE, the final norm of one
engine is given an extra state of its own (what a TE norm adds to the checkpoint), and checkpoints are
moved both ways between it and a plain engine, through the trainer's load, the weights-only load and
the conversion load."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist

from tests.dist.engine_worker import _engine

CFG = {"layout": {"tp": 2, "use_distributed_optimizer": True}}


def _with_extra_state(engine, tag: float) -> torch.nn.Module:
    norm = engine.chunks[0].module.decoder.final_layernorm

    class NormWithExtraState(type(norm)):
        def get_extra_state(self):
            return torch.tensor([self.tag])

        def set_extra_state(self, state):
            self.loaded_extra = float(state[0])

    norm.__class__ = NormWithExtraState
    norm.tag = tag
    return norm


def _weights(engine) -> list[torch.Tensor]:
    return [p.detach().clone() for c in engine.chunks for p in c.module.parameters()]


def _perturbed(engine) -> None:
    with torch.no_grad():
        for c in engine.chunks:
            for p in c.module.parameters():
                p.add_(0.01)


def both_ways(root: str) -> dict:
    from dcpo_mcore.convert.rank_ops import load_chunks
    from dcpo_mcore.engine import dist_ckpt

    hf = Path(root) / "hf"
    if dist.get_rank() == 0:
        from dcpo_mcore.hf.tiny import make_tiny_hf_model

        make_tiny_hf_model("qwen2", hf, num_layers=2, seed=4)
    dist.barrier()
    out = {}
    plain = _engine(str(hf), CFG)
    extra = _engine(str(hf), CFG)
    norm = _with_extra_state(extra, 7.0)
    out["extra_key_saved"] = "decoder.final_layernorm._extra_state" in extra.chunks[0].module.state_dict()
    reference = _weights(plain)

    # local-spec checkpoint (no extra state) -> a model that has one
    dist_ckpt.save(Path(root) / "plain", plain.chunks, plain.optimizer, {"who": "plain"})
    _perturbed(extra)
    got = dist_ckpt.load(Path(root) / "plain", extra.chunks, extra.optimizer)
    out["plain_into_extra"] = got == {"who": "plain"} and all(
        torch.equal(a, b) for a, b in zip(reference, _weights(extra)))
    out["kept_own_extra_state"] = getattr(norm, "loaded_extra", None) == 7.0  # its own, not lost

    # a checkpoint with the extra state -> the plain model, by all three loaders
    dist_ckpt.save(Path(root) / "extra", extra.chunks, extra.optimizer, {"who": "extra"})
    _perturbed(plain)
    dist_ckpt.load(Path(root) / "extra", plain.chunks, plain.optimizer)
    out["extra_into_plain"] = all(torch.equal(a, b) for a, b in zip(reference, _weights(plain)))
    _perturbed(plain)
    dist_ckpt.load_weights_only(Path(root) / "extra", plain.chunks)
    out["weights_only"] = all(torch.equal(a, b) for a, b in zip(reference, _weights(plain)))
    _perturbed(plain)
    load_chunks([c.module for c in plain.chunks], str(Path(root) / "extra"))
    out["conversion_load"] = all(torch.equal(a, b) for a, b in zip(reference, _weights(plain)))

    # and the extra state itself travels where both sides have it
    other = _engine(str(hf), CFG)
    other_norm = _with_extra_state(other, 3.0)
    dist_ckpt.load(Path(root) / "extra", other.chunks, other.optimizer)
    out["extra_state_loaded"] = getattr(other_norm, "loaded_extra", None) == 7.0  # the checkpoint's, not its 3
    json.dumps(out)
    return out
