"""Pure per-chunk math for vocab-parallel log-probabilities and entropy.

No communication happens here: every function is a function of tensors and plain scalars, so it can
be unit-tested in one process. :mod:`dcpo_mcore.ops.vocab_parallel` loops over token chunks, calls
these helpers and does the all-reduces over the tensor-parallel group in between.

Notation (all per token row; ``tau`` is the sampling temperature, ``inv_temp = 1 / tau``):

* ``z``  -- raw logits of the local vocab shard, ``[C, V_local]`` for one chunk of ``C`` rows.
* ``u = z * inv_temp`` -- temperature-scaled logits. Never materialised as a full copy: it is
  folded into the one ``torch.add(..., alpha=inv_temp)`` that also subtracts the row offset.
* ``mu`` -- row max of ``u`` over the local shard (``M`` after the MAX all-reduce).
* ``s = sum_v exp(u - mu)`` -- local sum of exponentials relative to the local max.
* ``w = sum_v exp(u - mu) * (u - mu)`` -- local entropy term (only when entropy is wanted).

Combining shards: with ``c_r = exp(mu_r - M)``, the global sums are
``S = sum_r c_r * s_r`` and ``W = sum_r c_r * (w_r + s_r * (mu_r - M))`` (where
``W = sum_v exp(u - M) * (u - M)``), so each rank rescales its local sums with
:func:`rescale_to_global_max` and a single SUM all-reduce finishes the job. Then::

    lse      = M + log S                  (log-sum-exp of the scaled logits)
    logprob  = u[target] - lse
    entropy  = -sum_v p_v log p_v = log S - W / S,   with p = softmax(u)

Keeping ``(u - M)`` rather than ``u`` inside ``W`` avoids the cancellation of two large numbers in
the entropy. Rows whose local shard is entirely ``-inf`` (masked vocabulary) give ``s_r = w_r = 0``
and ``c_r = 0`` instead of NaN.

The gradient of ``logprob`` w.r.t. ``z`` is ``inv_temp * (onehot(target) - p)``; the backward
recomputes ``p = exp(u - lse)`` chunk by chunk (:func:`chunk_logprob_grad`), so no ``[T, V_local]``
softmax is ever stored.
"""
from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math runs in: float32 for 16-bit inputs, the input dtype otherwise (fp32/fp64)."""
    if not dtype.is_floating_point:
        raise TypeError(f"logits must be a floating-point tensor, got {dtype}")
    return torch.promote_types(dtype, torch.float32)


def shard_vocab_range(v_local: int, tp_rank: int) -> tuple[int, int]:
    """Vocab ids ``[start, end)`` held by ``tp_rank`` when every rank holds ``v_local`` contiguous ids."""
    start = tp_rank * v_local
    return start, start + v_local


def localize_targets(
    targets: torch.Tensor, vocab_start: int, v_local: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map global target ids to local column indices of this shard.

    Returns ``(local_idx, in_shard)``: ``local_idx`` is the int64 column index, clamped to 0 where the
    target lives on another shard (so it is always safe to index with), and ``in_shard`` is the
    boolean mask of targets that live on this shard.
    """
    local = targets.long() - vocab_start
    in_shard = (local >= 0) & (local < v_local)
    return torch.where(in_shard, local, torch.zeros_like(local)), in_shard


def target_logits(
    logits: torch.Tensor,
    rows: torch.Tensor | None,
    local_idx: torch.Tensor,
    in_shard: torch.Tensor,
    inv_temp: float,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Scaled target logit ``u[target]`` per requested row, 0 where the target is on another shard.

    ``rows`` are the requested row indices (``None``: every row, in order). Reads ``N`` elements only.
    """
    if rows is None:
        picked = logits.gather(1, local_idx.unsqueeze(1)).squeeze(1)
    else:
        picked = logits[rows, local_idx]
    picked = picked.to(dtype) * inv_temp
    return torch.where(in_shard, picked, torch.zeros_like(picked))


def chunk_softmax_stats(
    z: torch.Tensor, inv_temp: float, scratch: torch.Tensor, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Local softmax statistics of one chunk of rows of one vocab shard.

    Args:
        z: ``[C, V_local]`` raw logits (any float dtype; may be a strided view).
        inv_temp: ``1 / temperature``.
        scratch: ``[C, V_local]`` buffer in the compute dtype; overwritten. It is the only
            chunk-sized temporary: the scaled, shifted logits and their exponentials live in it.
        with_entropy: also return ``w``.

    Returns:
        ``(mu, s, w)`` of shape ``[C]`` in ``scratch.dtype``: the local max of ``u = z * inv_temp``,
        ``s = sum exp(u - mu)`` and ``w = sum exp(u - mu) * (u - mu)`` (``None`` unless
        ``with_entropy``). ``mu`` is ``-inf`` for a row whose shard is all ``-inf``.
    """
    mu = z.amax(dim=-1).to(scratch.dtype) * inv_temp
    mu_safe = torch.where(torch.isneginf(mu), torch.zeros_like(mu), mu)
    _scaled_minus(z, mu_safe, inv_temp, scratch)  # scratch = u - mu
    scratch.exp_()
    s = scratch.sum(dim=-1)
    w = None
    if with_entropy:
        # e * log(e) == e * (u - mu); xlogy makes 0 * log 0 == 0 for underflowed / -inf entries.
        torch.special.xlogy(scratch, scratch, out=scratch)
        w = scratch.sum(dim=-1)
    return mu, s, w


def rescale_to_global_max(
    mu_local: torch.Tensor, mu_global: torch.Tensor, s: torch.Tensor, w: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Re-express one shard's ``s`` and ``w`` relative to the global row max ``mu_global``.

    After this, summing the returned tensors over all shards gives ``S`` and ``W`` (module docstring).
    """
    finite = ~torch.isneginf(mu_local)
    shift = torch.where(finite, mu_local - mu_global, torch.zeros_like(mu_local))
    scale = torch.where(finite, shift.exp(), torch.zeros_like(mu_local))
    s_global = s * scale
    w_global = None if w is None else (w + s * shift) * scale
    return s_global, w_global


def finalize_logprobs(
    mu_global: torch.Tensor,
    sum_exp: torch.Tensor,
    target_logit: torch.Tensor,
    w_global: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(lse, logprob, entropy)`` from the globally reduced statistics (entropy ``None`` if ``w`` is)."""
    log_s = sum_exp.log()
    lse = mu_global + log_s
    logprob = target_logit - lse
    entropy = None if w_global is None else log_s - w_global / sum_exp
    return lse, logprob, entropy


def chunk_logprob_grad(
    z: torch.Tensor,
    lse: torch.Tensor,
    local_idx: torch.Tensor,
    in_shard: torch.Tensor,
    coef: torch.Tensor,
    inv_temp: float,
    scratch: torch.Tensor,
    out: torch.Tensor,
) -> torch.Tensor:
    """Gradient of ``sum_i grad_i * logprob_i`` w.r.t. one chunk of one shard's raw logits.

    ``grad_z = coef * (onehot(target) - p)`` with ``coef = grad_logprob * inv_temp`` and
    ``p = exp(z * inv_temp - lse)`` recomputed here.

    Args:
        z: ``[C, V_local]`` raw logits of the chunk.
        lse: ``[C]`` global log-sum-exp of the scaled logits (compute dtype).
        local_idx, in_shard: from :func:`localize_targets` for these rows.
        coef: ``[C]`` upstream gradient times ``inv_temp`` (compute dtype).
        scratch: ``[C, V_local]`` compute-dtype buffer, overwritten.
        out: ``[C, V_local]`` destination (any float dtype). May alias ``z`` (in-place backward) or
            ``scratch``: ``z`` is fully read before ``out`` is written.

    Returns ``out``.
    """
    _scaled_minus(z, lse, inv_temp, scratch)
    scratch.exp_()  # p
    scratch.scatter_add_(1, local_idx.unsqueeze(1), in_shard.to(scratch.dtype).neg().unsqueeze(1))
    if out.dtype == scratch.dtype:
        torch.mul(scratch, coef.neg().unsqueeze(1), out=out)  # coef * (onehot - p)
    else:  # scale in place, then one casting copy: no hidden chunk-sized temporary
        scratch.mul_(coef.neg().unsqueeze(1))
        out.copy_(scratch)
    return out


def _scaled_minus(z: torch.Tensor, shift: torch.Tensor, inv_temp: float, out: torch.Tensor) -> None:
    """``out = z * inv_temp - shift[:, None]`` in ``out``'s dtype, touching no memory besides ``out``.

    A mixed-dtype ``torch.add`` (bf16 ``z``, fp32 ``out``) would first cast ``z`` into a hidden
    temporary of ``out``'s size; casting straight into ``out`` and finishing in place avoids it.
    """
    if z.dtype == out.dtype:
        torch.add(shift.neg().unsqueeze(1), z, alpha=inv_temp, out=out)
    else:
        out.copy_(z)
        torch.add(shift.neg().unsqueeze(1), out, alpha=inv_temp, out=out)
