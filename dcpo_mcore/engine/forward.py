"""The one forward-step adapter handed to megatron's ``get_forward_backward_func``, and result collection.

Loss scaling contract (megatron-core 0.16.1 and 0.19.2 alike, ``schedules.forward_step_calc_loss`` and
DDP; the layout-invariance tests check it on both stacks):

* The engine sets ``config.calculate_per_token_loss = True``. With a 3-tuple ``(loss, num_tokens,
  metrics)`` from the loss function, the schedule then neither divides the loss by ``num_tokens`` nor
  by the number of micro-batches, and megatron's DDP sets ``gradient_scaling_factor = 1``: DP grads
  are SUMMED, not averaged.
* ``finalize_model_grads`` would then divide every grad by the step's total ``num_tokens``; the engine
  wraps it (:func:`finalize_grads_without_token_scaling`) so that it does not.

Net effect: the gradient is exactly d(sum of the micro-batch losses over all micro-batches and DP
ranks). Our losses already carry the step's GLOBAL denominators (algo.GlobalCounts;
docs/algorithm.md [global-denominators]), so this sum is the full-batch loss whatever the TP x PP x DP x
micro-batch layout.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.distributed import finalize_model_grads

from dcpo_mcore.algo import GlobalCounts, LossSpec, policy_loss
from dcpo_mcore.ops import vocab_parallel_logprobs

from .batching import MicroBatch
from .output_rows import ResponseRowSelector

# Logit for vocab rows that exist only as megatron padding: finite (so entropy is not NaN) and low
# enough that exp() underflows to exactly 0 in fp32/bf16 (and fits fp16).
PADDED_VOCAB_LOGIT = -1.0e4


def finalize_grads_without_token_scaling(model, num_tokens=None, **kwargs):
    """``finalize_model_grads`` minus its division by the step's token count (see module docstring)."""
    return finalize_model_grads(model, None, **kwargs)


def mask_padded_vocab_(logits: torch.Tensor, vocab_size: int, tp_rank: int) -> torch.Tensor:
    """Fill this rank's columns of padded vocab ids (>= ``vocab_size``) in place; their grad is zero.

    Only the last TP rank(s) hold such columns. In-place is safe for autograd here: the output layer
    saved its input and weight, not its output.
    """
    v_local = logits.shape[-1]
    first_pad = vocab_size - tp_rank * v_local
    if first_pad < v_local:
        logits[..., max(first_pad, 0):].fill_(PADDED_VOCAB_LOGIT)
    return logits


@dataclass(frozen=True)
class LogprobSettings:
    vocab_size: int  # real (unpadded) vocabulary size
    temperature: float = 1.0  # the rollout's sampling temperature
    packed_seq_params: bool = False  # TE: packed rows go through PackedSeqParams (thd), not a dense mask


def response_logprobs(mb: MicroBatch, logits: torch.Tensor, settings: LogprobSettings, rows_only: bool = False):
    """Log-probs and entropies ``[n_seq, R_max]`` of the response tokens.

    ``logits`` is ``[B, S, V/TP]`` over every position, or with ``rows_only`` ``[1, N, V/TP]`` at the
    micro-batch's ``N`` response positions, in order (:class:`ResponseRowSelector`). The full
    vocabulary is never gathered: :func:`vocab_parallel_logprobs` reduces over the TP group.
    """
    tp_group = ps.get_tensor_model_parallel_group()
    tp_rank = ps.get_tensor_model_parallel_rank()
    flat = logits.reshape(-1, logits.shape[-1])
    mask_padded_vocab_(flat, settings.vocab_size, tp_rank)
    if rows_only:
        if flat.shape[0] != mb.num_tokens:
            raise RuntimeError(f"the output layer gave {flat.shape[0]} rows for {mb.num_tokens} response positions")
        targets, positions = mb.targets[mb.positions], None
    else:
        targets, positions = mb.targets, mb.positions.to(flat.device)
    lp, ent = vocab_parallel_logprobs(
        flat, targets.to(flat.device), tp_group=tp_group, temperature=settings.temperature,
        positions=positions, return_entropy=True)
    n_slots = mb.resp_mask.numel()
    slots = mb.slots.to(flat.device)
    # index_copy is differentiable w.r.t. the source: the per-sample matrix keeps the graph.
    lp_mat = torch.zeros(n_slots, dtype=lp.dtype, device=lp.device).index_copy(0, slots, lp)
    ent_mat = torch.zeros(n_slots, dtype=ent.dtype, device=ent.device).index_copy(0, slots, ent)
    shape = tuple(mb.resp_mask.shape)
    return lp_mat.view(shape), ent_mat.view(shape)


def packed_seq_params(mb: MicroBatch, device: torch.device):
    """TE's thd description of a packed micro-batch. The offsets go to the model's device as int32 (TE's
    fused attention reads them on the GPU; the micro-batch itself is built on the CPU); the longest
    sequence is read from the CPU copy, so no device sync is needed."""
    from megatron.core.packed_seq_params import PackedSeqParams

    longest = int((mb.cu_seqlens[1:] - mb.cu_seqlens[:-1]).max())
    cu = mb.cu_seqlens.to(device=device, dtype=torch.int32)
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                           max_seqlen_q=longest, max_seqlen_kv=longest)


class ForwardStep:
    """``forward_step_func(data_iterator, model)`` for megatron's schedules.

    With ``loss_spec`` it computes :func:`policy_loss` for training; without it (forward-only) it returns
    the log-probs and entropies as the micro-batch's metrics. ``counts`` are the GLOBAL counts of the
    optimizer step (computed once by the engine). With ``rows`` (the engine's hooks on its output
    layers) the logits are computed at the response positions only.
    """

    def __init__(self, settings: LogprobSettings, loss_spec: LossSpec | None = None,
                 counts: GlobalCounts | None = None, device: torch.device | None = None,
                 rows: ResponseRowSelector | None = None):
        if loss_spec is not None and counts is None:
            raise ValueError("training needs the step's global counts")
        self.settings, self.loss_spec, self.counts = settings, loss_spec, counts
        self.device = device or torch.device("cpu")
        self.rows = rows if rows is not None and rows.active else None

    def __call__(self, data_iterator, model):
        mb: MicroBatch = next(data_iterator)
        dev = self.device
        with self.rows.only(mb.positions) if self.rows is not None else contextlib.nullcontext():
            if self.settings.packed_seq_params and mb.cu_seqlens is not None:
                # thd: one flattened row; TE restarts RoPE and attention at every cu_seqlens offset.
                out = model(mb.tokens.reshape(1, -1).to(dev), mb.position_ids.reshape(1, -1).to(dev), None,
                            packed_seq_params=packed_seq_params(mb, dev))
            else:
                mask = None if mb.attention_mask is None else mb.attention_mask.to(dev)
                out = model(mb.tokens.to(dev), mb.position_ids.to(dev), mask)
        return out, functools.partial(self._loss, mb)

    def _loss(self, mb: MicroBatch, logits: torch.Tensor):
        lp, ent = response_logprobs(mb, logits, self.settings, rows_only=self.rows is not None)
        mask = mb.resp_mask.to(lp.device)
        num_tokens = mask.sum().to(torch.int)
        if self.loss_spec is None:
            metrics = {"logprobs": lp.detach(), "entropy": ent, "seq_index": mb.seq_index, "resp_mask": mb.resp_mask}
            return lp.new_zeros(()), num_tokens, metrics
        dev = lp.device
        out = policy_loss(
            self.loss_spec, lp, mb.old_logprobs.to(dev), mb.advantages.to(dev), mask, self.counts,
            ref_logprobs=None if mb.ref_logprobs is None else mb.ref_logprobs.to(dev),
            token_weights=None if mb.token_weights is None else mb.token_weights.to(dev))
        metrics = {
            "loss": out.loss.detach().clone(),  # the schedule may scale the returned tensor in place
            "policy_loss": out.policy_loss, "kl": out.kl if out.kl is not None else torch.zeros(()),
            "clip": out.clip.as_tensor(), "entropy_sum": (ent * mask).sum().to(torch.float64),
            "tokens": mask.sum().to(torch.float64), "log_ratio_abs_max": out.log_ratio_abs_max,
            # k1 estimate of KL(rollout policy || current policy), summed over response tokens
            "ppo_kl_sum": ((mb.old_logprobs.to(dev) - lp.detach()) * mask).sum().to(torch.float64),
        }
        return out.loss, num_tokens, metrics


def _is_contributor() -> bool:
    """One rank per DP replica reports a micro-batch's results: TP rank 0 of the last PP stage."""
    return ps.is_pipeline_last_stage(ignore_virtual=True) and ps.get_tensor_model_parallel_rank() == 0


def gather_logprobs(store: list[dict], response_lengths: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-sample ``[R_i]`` log-probs and entropies on EVERY rank, from the last stages' forward outputs.

    Each sample's values are written by exactly one rank into a zero buffer that is summed over the
    world, so the result is exact (adding zeros) and identical everywhere.
    """
    offsets = [0]
    for n in response_lengths:
        offsets.append(offsets[-1] + n)
    buf = torch.zeros(2, offsets[-1], dtype=torch.float32)
    if _is_contributor():
        for item in store:
            for row, (i, m) in enumerate(zip(item["seq_index"].tolist(), item["resp_mask"])):
                n = int(m.sum())
                buf[0, offsets[i]: offsets[i] + n] = item["logprobs"][row, :n].float().cpu()
                buf[1, offsets[i]: offsets[i] + n] = item["entropy"][row, :n].float().cpu()
    _all_reduce_cpu(buf, dist.ReduceOp.SUM)
    lps = [buf[0, offsets[i]: offsets[i + 1]].clone() for i in range(len(response_lengths))]
    ents = [buf[1, offsets[i]: offsets[i + 1]].clone() for i in range(len(response_lengths))]
    return lps, ents


def reduce_train_metrics(store: list[dict], num_microbatches: int) -> dict[str, torch.Tensor]:
    """Step totals over micro-batches and DP ranks (on every rank): sums, stacked clip counts, max."""
    dp_size, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    names = ("loss", "policy_loss", "kl", "entropy_sum", "tokens", "ppo_kl_sum")
    sums = torch.zeros(len(names), dtype=torch.float64)
    clip = torch.zeros(dp_size, num_microbatches, 5, dtype=torch.float64)
    lr_max = torch.zeros(1, dtype=torch.float64)
    if _is_contributor():
        for m, item in enumerate(store):
            sums += torch.stack([item[k].detach().double().cpu().reshape(()) for k in names])
            clip[dp_rank, m] = item["clip"].double().cpu()
            lr_max = torch.maximum(lr_max, item["log_ratio_abs_max"].double().cpu().reshape(1))
    packed = torch.cat([sums, clip.reshape(-1)])
    _all_reduce_cpu(packed, dist.ReduceOp.SUM)
    _all_reduce_cpu(lr_max, dist.ReduceOp.MAX)
    out = dict(zip(names, packed[:len(names)]))
    out["clip_per_micro"] = packed[len(names):].reshape(dp_size * num_microbatches, 5)
    out["log_ratio_abs_max"] = lr_max[0]
    return out


def _all_reduce_cpu(t: torch.Tensor, op) -> None:
    """All-reduce a CPU tensor over the world (moved to the accelerator first under NCCL)."""
    if dist.get_backend() == "nccl":
        dev = t.cuda()
        dist.all_reduce(dev, op=op)
        t.copy_(dev.cpu())
    else:
        dist.all_reduce(t, op=op)
