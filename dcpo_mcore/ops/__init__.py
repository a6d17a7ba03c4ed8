"""Vocab-parallel kernels that take an explicit ``tp_group`` (docs/architecture.md [conv-global-counts]).

* :func:`vocab_parallel_logprobs` -- per-token log-probabilities (and entropy) of target tokens from
  vocab-sharded logits ``[T, V/TP]``, chunked along tokens, temperature applied inside, never
  gathering the vocabulary.
* :mod:`dcpo_mcore.ops.logprob_math` -- the pure per-chunk math it is built from.
"""
from dcpo_mcore.ops.vocab_parallel import default_chunk_size, vocab_parallel_logprobs

__all__ = ["vocab_parallel_logprobs", "default_chunk_size"]
