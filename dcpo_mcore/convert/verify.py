"""Self-checks run by the coordinator after the ranks finish (no megatron here).

* :func:`compare_hf_dirs` -- the ``--verify`` round trip: every exported tensor must be byte-identical
  (same dtype, same shape, same bytes) to the original; the first difference is reported by name.
* :func:`check_logprobs` -- Megatron's float32 log-probs (computed by the ranks) against
  ``log_softmax`` of Hugging Face's logits on the same random token sequences.
"""
from __future__ import annotations

from pathlib import Path

import torch

from dcpo_mcore.engine.hf_arch import ArchSpec
from dcpo_mcore.engine.hf_mapping import expected_hf_names

from .errors import VerifyError
from .hf_io import HfWeights


def compare_hf_dirs(reference: Path, exported: Path, arch: ArchSpec) -> int:
    """Raise :class:`VerifyError` on the first tensor that differs; return how many were compared.

    Only the architecture's tensors are compared: the reference may carry ignorable extras (an old
    ``rotary_emb.inv_freq``, a duplicate ``lm_head`` of a tied model) that are rightly not exported.
    """
    names = expected_hf_names(arch)
    with HfWeights(reference) as ref, HfWeights(exported) as got:
        extra = sorted(set(got.infos) - set(names))
        if extra:
            raise VerifyError(f"round trip wrote unexpected tensor {extra[0]!r}")
        for name in names:
            if name not in got.infos:
                raise VerifyError(f"round trip lost tensor {name!r}")
            a, b = ref.get(name), got.get(name)
            if a.dtype != b.dtype or a.shape != b.shape:
                raise VerifyError(f"round trip changed {name!r}: {a.dtype} {tuple(a.shape)} -> "
                                  f"{b.dtype} {tuple(b.shape)}")
            # Bytes, not values: NaN != NaN and -0.0 == 0.0 would fool a value comparison.
            if not torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)):
                diff = (a.float() - b.float()).abs().max().item()
                raise VerifyError(f"round trip changed the bytes of {name!r} (max abs diff {diff:.3e})")
    return len(names)


def random_input_ids(vocab_size: int, num_seqs: int, seq_len: int, seed: int) -> torch.Tensor:
    """[num_seqs, seq_len] token ids drawn uniformly from the real vocabulary, seeded."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (num_seqs, seq_len), generator=gen)


@torch.no_grad()
def hf_logprobs(hf_dir: Path, input_ids: torch.Tensor) -> torch.Tensor:
    """float32 ``log_softmax`` of the HF model's logits, [B, S, V] (weights upcast to float32)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stderr is reserved for our one-line error
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    model.eval()
    logits = model(input_ids=input_ids).logits
    return torch.log_softmax(logits.float(), dim=-1)


def check_logprobs(megatron_lp: torch.Tensor, hf_dir: Path, input_ids: torch.Tensor, tol: float) -> float:
    """Max |Megatron - HF| log-prob over every position and real vocabulary entry; raise above ``tol``."""
    ref = hf_logprobs(hf_dir, input_ids)
    if ref.shape != megatron_lp.shape:
        raise VerifyError(f"log-prob shapes differ: Megatron {tuple(megatron_lp.shape)} vs HF {tuple(ref.shape)}")
    diff = (megatron_lp - ref).abs().max().item()
    if not diff <= tol:  # also catches NaN
        raise VerifyError(f"Megatron and HF log-probs differ: max abs diff {diff:.3e} > tolerance {tol:g} "
                          f"({input_ids.shape[0]} random sequences of {input_ids.shape[1]} tokens)")
    return diff
