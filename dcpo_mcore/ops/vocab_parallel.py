"""Vocab-parallel per-token log-probabilities (and entropy) that never gather the vocabulary.

Each tensor-parallel rank holds the logits of a contiguous vocab slice, ``[T, V/TP]``; rank ``r`` of
``tp_group`` holds ids ``[r * V/TP, (r + 1) * V/TP)`` (megatron's ``ColumnParallelLinear`` output
layout). :func:`vocab_parallel_logprobs` returns ``log softmax(logits / temperature)[target]`` at the
requested token positions, with two small all-reduces in the forward (a MAX of the ``[N]`` row maxima,
then one SUM of the stacked ``[N]`` sum-of-exps, target logits and entropy terms) and none in the
backward.

Memory. Forward and backward walk the requested rows in chunks of ``chunk_size`` tokens; the only
chunk-sized temporaries are one compute-dtype scratch buffer (``chunk_size * V/TP * 4`` bytes for
fp32/bf16/fp16 logits) and, when ``positions`` is given, one gathered copy of the chunk's rows in the
logits dtype. Nothing ``[T, V/TP]``-sized is saved for backward beyond the logits themselves, and
with ``inplace_backward=True`` the gradient is written into the logits' own storage, so no second
``[T, V/TP]`` buffer exists at any point.

The math lives in :mod:`dcpo_mcore.ops.logprob_math` as pure functions; this module only loops over
chunks and talks to ``tp_group``.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from dcpo_mcore.ops import logprob_math as lm

__all__ = ["vocab_parallel_logprobs", "default_chunk_size"]

# Elements of the compute-dtype scratch buffer per chunk when chunk_size=None. On CPU a ~4 MiB fp32
# chunk stays in the last-level cache between the passes over it (measured 1.6x faster than 1024-row
# chunks at V/TP = 16384, see docs/performance.md); on an accelerator a larger chunk amortises the
# ~8 kernel launches per chunk (2**24 fp32 elements = 64 MiB).
_CHUNK_ELEMENTS_CPU = 1 << 20
_CHUNK_ELEMENTS_ACCEL = 1 << 24


def default_chunk_size(v_local: int, device: torch.device | str = "cpu") -> int:
    """Tokens per chunk used when ``chunk_size=None``: a fixed scratch budget divided by ``V/TP``."""
    budget = _CHUNK_ELEMENTS_CPU if torch.device(device).type == "cpu" else _CHUNK_ELEMENTS_ACCEL
    return max(1, budget // max(1, v_local))


def _tp_rank_and_size(tp_group) -> tuple[int, int]:
    if tp_group is None:
        return 0, 1
    size = dist.get_world_size(group=tp_group)
    rank = dist.get_rank(group=tp_group)
    if rank < 0:
        raise ValueError("this process is not a member of tp_group")
    return rank, size


def _chunks(n: int, chunk_size: int):
    for start in range(0, n, chunk_size):
        yield start, min(start + chunk_size, n)


def _rows_of_chunk(logits, rows, start, end, gather_buf):
    """The chunk's logits rows: a view when all rows are asked for, else a gathered copy."""
    if rows is None:
        return logits[start:end]
    out = gather_buf[: end - start]
    torch.index_select(logits, 0, rows[start:end], out=out)
    return out


class _VocabParallelLogprobs(torch.autograd.Function):
    """Autograd node; see :func:`vocab_parallel_logprobs` for the contract."""

    @staticmethod
    def forward(ctx, logits, targets, rows, tp_group, inv_temp, chunk_size, inplace_backward, with_entropy):
        tp_rank, tp_size = _tp_rank_and_size(tp_group)
        n_rows, v_local = logits.shape
        cdt = lm.compute_dtype(logits.dtype)
        vocab_start, _ = lm.shard_vocab_range(v_local, tp_rank)
        tgt = targets if rows is None else targets.index_select(0, rows)
        local_idx, in_shard = lm.localize_targets(tgt, vocab_start, v_local)
        n = tgt.shape[0]

        mu = logits.new_empty(n, dtype=cdt)
        sum_exp = logits.new_empty(n, dtype=cdt)
        w = logits.new_empty(n, dtype=cdt) if with_entropy else None
        chunk = max(1, min(chunk_size, n))
        scratch = logits.new_empty(chunk, v_local, dtype=cdt)
        gather_buf = None if rows is None else logits.new_empty(chunk, v_local)
        for start, end in _chunks(n, chunk):
            z = _rows_of_chunk(logits, rows, start, end, gather_buf)
            c_mu, c_s, c_w = lm.chunk_softmax_stats(z, inv_temp, scratch[: end - start], with_entropy)
            mu[start:end] = c_mu
            sum_exp[start:end] = c_s
            if with_entropy:
                w[start:end] = c_w
        del scratch, gather_buf

        tgt_logit = lm.target_logits(logits, rows, local_idx, in_shard, inv_temp, cdt)
        if tp_size > 1:
            mu_global = mu.clone()
            dist.all_reduce(mu_global, op=dist.ReduceOp.MAX, group=tp_group)
        else:
            mu_global = mu
        sum_exp, w = lm.rescale_to_global_max(mu, mu_global, sum_exp, w)
        if tp_size > 1:
            parts = [sum_exp, tgt_logit] + ([w] if with_entropy else [])
            packed = torch.stack(parts)
            dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=tp_group)
            sum_exp, tgt_logit = packed[0], packed[1]
            w = packed[2] if with_entropy else None
        lse, logprob, entropy = lm.finalize_logprobs(mu_global, sum_exp, tgt_logit, w)

        ctx.inv_temp = inv_temp
        ctx.chunk = chunk
        ctx.inplace = inplace_backward
        ctx.set_materialize_grads(False)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(logits, lse, local_idx, in_shard, rows)
        if with_entropy:
            ctx.mark_non_differentiable(entropy)
            return logprob, entropy
        return logprob

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logprob, *_unused):
        if grad_logprob is None:
            return (None,) * 8
        logits, lse, local_idx, in_shard, rows = ctx.saved_tensors
        cdt = lse.dtype
        n_rows, v_local = logits.shape
        coef = grad_logprob.to(cdt) * ctx.inv_temp
        chunk = ctx.chunk
        scratch = logits.new_empty(chunk, v_local, dtype=cdt)

        if rows is None:
            grad = logits if ctx.inplace else torch.empty_like(logits)
            for start, end in _chunks(n_rows, chunk):
                sl = slice(start, end)
                lm.chunk_logprob_grad(logits[sl], lse[sl], local_idx[sl], in_shard[sl], coef[sl],
                                      ctx.inv_temp, scratch[: end - start], out=grad[sl])
            return grad, None, None, None, None, None, None, None

        if ctx.inplace:
            # Rows not asked for are never read, so they can be zeroed first (no sync, no copy).
            asked = torch.zeros(n_rows, dtype=torch.bool, device=logits.device)
            asked[rows] = True
            grad = logits.masked_fill_(~asked.unsqueeze(1), 0)
        else:
            grad = torch.zeros_like(logits)
        gather_buf = logits.new_empty(chunk, v_local)
        for start, end in _chunks(rows.shape[0], chunk):
            sl = slice(start, end)
            # z is a private gathered copy in the logits dtype: the chunk's gradient overwrites it.
            z = _rows_of_chunk(logits, rows, start, end, gather_buf)
            lm.chunk_logprob_grad(z, lse[sl], local_idx[sl], in_shard[sl], coef[sl],
                                  ctx.inv_temp, scratch[: end - start], out=z)
            grad.index_copy_(0, rows[sl], z)
        return grad, None, None, None, None, None, None, None


def _normalize_positions(positions, n_rows: int, device, check_unique: bool):
    if positions is None:
        return None
    if positions.dim() != 1:
        raise ValueError(f"positions must be 1-D (row indices or a [T] bool mask), got shape {tuple(positions.shape)}")
    if positions.dtype == torch.bool:
        if positions.shape[0] != n_rows:
            raise ValueError(f"a bool positions mask must have T={n_rows} entries, got {positions.shape[0]}")
        # nonzero() synchronises a GPU stream; pass int64 indices to avoid that.
        return positions.nonzero().squeeze(1).to(device)
    if positions.dtype.is_floating_point or positions.dtype.is_complex:
        raise TypeError(f"positions must be an integer index tensor or a bool mask, got {positions.dtype}")
    rows = positions.to(device=device, dtype=torch.long)
    if check_unique and rows.numel() > 1:
        ordered = rows.sort().values
        torch._assert_async(
            (ordered[1:] != ordered[:-1]).all(),
            "vocab_parallel_logprobs: positions contain duplicate row indices; the gradient would be wrong",
        )
    return rows


def vocab_parallel_logprobs(
    logits_shard: torch.Tensor,
    targets: torch.Tensor,
    *,
    tp_group=None,
    temperature: float = 1.0,
    positions: torch.Tensor | None = None,
    chunk_size: int | None = None,
    inplace_backward: bool = True,
    return_entropy: bool = False,
):
    """Log-probabilities of ``targets`` under ``softmax(logits / temperature)`` from vocab-sharded logits.

    Args:
        logits_shard: ``[T, V/TP]`` logits of this rank's vocab slice (fp32, bf16, fp16 or fp64; any
            strides). Rank ``r`` of ``tp_group`` must hold vocab ids ``[r * V/TP, (r + 1) * V/TP)``.
        targets: ``[T]`` integer token ids (global vocab ids). With ``positions`` only
            ``targets[positions]`` are read.
        tp_group: the tensor-parallel process group. ``None`` or a 1-rank group: no communication,
            the shard is the whole vocabulary. Every rank of the group must call this with the same
            ``T``, ``targets``, ``positions``, ``temperature`` and ``chunk_size``.
        temperature: the sampling temperature (> 0). Applied inside the op; no scaled copy of the
            logits is made.
        positions: rows to compute, as ``[N]`` unique int64 row indices (output order follows them;
            duplicates raise when a gradient is needed, through ``torch._assert_async``) or a ``[T]``
            bool mask (converted with ``nonzero``, which syncs a GPU). Rows not asked for
            get a zero gradient and are never exponentiated. ``None``: all ``T`` rows.
        chunk_size: tokens per chunk. Extra memory in forward and backward is about
            ``chunk_size * V/TP * 4`` bytes (plus the same in the logits dtype with ``positions``),
            independent of ``T``. Any positive value is correct; it need not divide ``T``.
            ``None``: :func:`default_chunk_size` (about 4 MiB of fp32 scratch on CPU, 64 MiB on an
            accelerator; e.g. 64 tokens on CPU at ``V/TP = 16384``).
        inplace_backward: write the gradient w.r.t. the logits into the logits' own storage, chunk
            by chunk, and return that storage as the gradient, so no second ``[T, V/TP]`` buffer is
            allocated. **Contract:** after backward the logits tensor (and every view or
            ``.detach()`` alias of its storage) holds the gradient, not the logits, so

            * nothing may read the logits' values after this op's backward has run;
            * another autograd consumer that *saved* the logits for its own backward and whose
              backward runs after this one raises autograd's "modified by an inplace operation"
              error (the saved-tensor version check) instead of computing a wrong gradient;
            * consumers whose backward does not need the logits' values (e.g. ``logits * 2``,
              ``logits.sum()``), or that ran earlier in the backward pass, are unaffected;
            * this op may be applied only once to a given logits tensor per backward (a second
              application raises through the same version check).

            A megatron ``ColumnParallelLinear`` output layer saves its input and weight, not its
            output, so the usual ``logits -> vocab_parallel_logprobs`` path is safe.
            ``False``: a fresh gradient buffer is allocated and the logits are left untouched.
        return_entropy: also return the entropy of ``softmax(logits / temperature)`` at each requested
            row, as a non-differentiable metric tensor.

    Returns:
        ``logprobs`` ``[N]`` (``N = T`` without ``positions``), or ``(logprobs, entropy)``. Both are in
        float32 for 16-bit logits, else in the logits dtype. They are identical on every rank of
        ``tp_group``.
    """
    if logits_shard.dim() != 2:
        raise ValueError(f"logits_shard must be [T, V/TP], got shape {tuple(logits_shard.shape)}; flatten the token dims first")
    n_rows = logits_shard.shape[0]
    if targets.shape != (n_rows,):
        raise ValueError(f"targets must have shape [T]=({n_rows},), got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"targets must be integer token ids, got {targets.dtype}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size is None:
        chunk_size = default_chunk_size(logits_shard.shape[1], logits_shard.device)
    elif chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (or None for the default), got {chunk_size}")
    needs_grad = torch.is_grad_enabled() and logits_shard.requires_grad
    rows = _normalize_positions(positions, n_rows, logits_shard.device, check_unique=needs_grad)
    return _VocabParallelLogprobs.apply(
        logits_shard, targets.to(logits_shard.device), rows, tp_group, 1.0 / float(temperature),
        int(chunk_size), bool(inplace_backward), bool(return_entropy),
    )
