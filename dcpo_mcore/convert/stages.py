"""Pure layout arithmetic shared by the ranks (no megatron, no torch.distributed; unit-tested alone).

Virtual stages: with ``pp`` pipeline ranks and ``vpp`` chunks per rank (interleaved schedule), chunk
``v`` of PP rank ``p`` is stage ``s = v * pp + p`` of ``S = pp * vpp`` equal, contiguous stages -- the
way megatron assigns layers. :mod:`dcpo_mcore.engine.hf_mapping` only knows "``S`` contiguous stages",
so it is called with ``pp_size=S, pp_rank=s``; without VPP, ``S = pp`` and ``s = p``.
"""
from __future__ import annotations

from dcpo_mcore.engine.hf_arch import ArchSpec
from dcpo_mcore.engine.hf_mapping import ParamSpec, expected_hf_names, layer_range, mcore_params


def virtual_stage(v: int, pp: int, pp_rank: int) -> int:
    return v * pp + pp_rank


def export_plan(arch: ArchSpec, tp: int, num_stages: int, te_names: bool = False) -> list[tuple[int, ParamSpec]]:
    """Every exported megatron parameter, in the order ``iter_mcore_to_hf`` asks for them.

    Export streams parameters from every rank to rank 0 point to point; senders and the receiver both
    follow this list, and the receiver checks each request against it. The only parameter not exported
    is the last stage's copy of a tied embedding (stage 0's embedding is the HF ``embed_tokens``).
    """
    plan = []
    for s in range(num_stages):
        for spec in mcore_params(arch, tp, num_stages, s, te_names):
            if not (arch.tie_word_embeddings and spec.name == "output_layer.weight"):
                plan.append((s, spec))
    return plan


def hf_names_read_by(arch: ArchSpec, stages: list[int], num_stages: int) -> list[str]:
    """HF tensors a rank holding ``stages`` reads on import (for its progress bar's total)."""
    layers = set()
    for s in stages:
        layers.update(layer_range(arch, num_stages, s))
    first, last = 0 in stages, num_stages - 1 in stages
    names = []
    for n in expected_hf_names(arch):
        if n.startswith("model.layers."):
            keep = int(n.split(".")[2]) in layers
        elif n == "model.embed_tokens.weight":  # also the tied output layer's source on the last stage
            keep = first or (last and arch.tie_word_embeddings and num_stages > 1)
        else:  # final norm, lm_head
            keep = last
        if keep:
            names.append(n)
    return names
