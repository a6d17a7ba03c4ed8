"""Pure layout arithmetic shared by the ranks (no megatron, no torch.distributed; unit-tested alone).

Virtual stages: with ``pp`` pipeline ranks and ``vpp`` chunks per rank (interleaved schedule), chunk
``v`` of PP rank ``p`` is stage ``s = v * pp + p`` of ``S = pp * vpp`` equal, contiguous stages -- the
way megatron assigns layers. :mod:`dcpo_mcore.engine.hf_mapping` only knows "``S`` contiguous stages",
so it is called with ``pp_size=S, pp_rank=s``; without VPP, ``S = pp`` and ``s = p``.
"""
from __future__ import annotations

from dcpo_mcore.engine.hf_arch import ArchSpec
from dcpo_mcore.engine.hf_mapping import export_plan, virtual_stage  # noqa: F401 - re-exported
from dcpo_mcore.engine.hf_mapping import expected_hf_names, layer_range


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
