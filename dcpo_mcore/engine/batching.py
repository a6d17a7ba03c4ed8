"""Micro-batches for the policy engine: DP split, micro-batch plan, padded or packed rows.

Every rank receives the SAME list of samples (the whole optimizer step). The split over data-parallel
ranks and into micro-batches is a pure function of the sequence lengths, so every rank computes every
other rank's share without communicating, and all DP ranks agree on the number of micro-batches (the
pipeline schedules deadlock otherwise).

Token layout. A sample is ``prompt + response`` (length L = P + R). The log-prob of response token j
(global position P + j) is read from the logits at position P + j - 1: the target of position t is
token t + 1. Two row layouts:

* padded: one sample per row, right-padded to the longest sample of the micro-batch (rounded up to
  ``pad_to_multiple``, e.g. the TP size for sequence parallelism); the default causal mask suffices
  because padding is on the right and its outputs are never read.
* packed: several samples concatenated in one row; position ids restart at 0 for each sample and the
  attention mask is block-diagonal causal (``True`` = masked, megatron's convention), so no token sees
  another sample. Trailing padding forms its own block (a fully masked row would give NaN softmax).

Whatever the layout, the loss sees per-sample ``[n_seq, R_max]`` tensors (``slots`` maps the flat
logit rows to them), so per-response aggregations such as OTM never depend on how rows were packed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from dcpo_mcore.errors import UserValueError

__all__ = ["BatchSettings", "MicroBatch", "PolicySample", "build_microbatch", "microbatch_count", "microbatch_shape",
           "plan_microbatches", "split_across_dp"]


@dataclass
class PolicySample:
    """One response with its prompt and the per-token inputs of the loss."""

    prompt_ids: Sequence[int] | torch.Tensor  # [P], P >= 1
    response_ids: Sequence[int] | torch.Tensor  # [R], R >= 1
    advantage: float = 0.0
    old_logprobs: torch.Tensor | None = None  # [R] old-policy log-probs: the engine's, before the step's updates
    ref_logprobs: torch.Tensor | None = None  # [R] reference-policy log-probs (KL, optional)
    token_weights: torch.Tensor | None = None  # [R] constant per-token loss weights (behaviour correction)

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


@dataclass(frozen=True)
class BatchSettings:
    """How one DP rank's share of the step becomes micro-batches."""

    packed: bool = False  # packed rows with block-diagonal masks instead of one padded row per sample
    micro_batch_size: int = 1  # samples per micro-batch (per DP rank), unless num_microbatches is set
    num_microbatches: int | None = None  # exactly this many micro-batches per DP rank
    pack_length: int | None = None  # packed row capacity in tokens; None = the whole micro-batch in one row
    pad_to_multiple: int = 1  # row length multiple (the engine raises it to TP under sequence parallel)

    def __post_init__(self) -> None:
        if self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {self.micro_batch_size}")
        if self.num_microbatches is not None and self.num_microbatches < 1:
            raise ValueError(f"num_microbatches must be >= 1 or None, got {self.num_microbatches}")
        if self.pad_to_multiple < 1:
            raise ValueError(f"pad_to_multiple must be >= 1, got {self.pad_to_multiple}")


@dataclass
class MicroBatch:
    """One micro-batch, ready for the model (first stage) and the loss (last stage)."""

    tokens: torch.Tensor  # [B, S] int64 input ids, 0 in padding
    position_ids: torch.Tensor  # [B, S] int64, restarting per sample
    attention_mask: torch.Tensor | None  # [B, 1, S, S] bool, True = masked; None = plain causal (padded)
    cu_seqlens: torch.Tensor | None  # [k+1] int32 block offsets in the flattened row stream (packed)
    targets: torch.Tensor  # [B*S] int64: next token at each flat position (0 where unused)
    positions: torch.Tensor  # [N] int64 flat rows of [B*S] whose target is a response token
    slots: torch.Tensor  # [N] int64 flat index into [n_seq, R_max] for each of those rows
    seq_index: torch.Tensor  # [n_seq] int64 index of each sample in the caller's list
    resp_mask: torch.Tensor  # [n_seq, R_max] bool
    advantages: torch.Tensor  # [n_seq] float32
    old_logprobs: torch.Tensor | None  # [n_seq, R_max] float32
    ref_logprobs: torch.Tensor | None  # [n_seq, R_max] float32
    token_weights: torch.Tensor | None = None  # [n_seq, R_max] float32

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.tokens.shape)  # (B, S)

    @property
    def num_tokens(self) -> int:
        return int(self.positions.numel())


def _balanced_bins(items: Sequence[tuple[int, int]], n_bins: int, max_count: int | None = None) -> list[list[int]]:
    """Greedy longest-first assignment of (index, weight) items to the lightest bin (deterministic).

    Ties go to the bin with fewer items, then the lower bin id; bins are returned sorted by index so the
    original order is kept inside each bin. ``max_count`` caps items per bin.
    """
    order = sorted(items, key=lambda it: (-it[1], it[0]))
    bins: list[list[int]] = [[] for _ in range(n_bins)]
    load = [0] * n_bins
    for idx, weight in order:
        open_bins = [b for b in range(n_bins) if max_count is None or len(bins[b]) < max_count]
        b = min(open_bins, key=lambda k: (load[k], len(bins[k]), k))
        bins[b].append(idx)
        load[b] += weight
    return [sorted(b) for b in bins]


def split_across_dp(lengths: Sequence[int], dp_size: int) -> list[list[int]]:
    """Sample indices of each DP rank, balanced by tokens and by count (never more than ceil(n/dp))."""
    if len(lengths) < dp_size:
        raise UserValueError(f"{len(lengths)} samples cannot feed {dp_size} data-parallel ranks; "
                         "give the step at least one sample per DP rank")
    return _balanced_bins(list(enumerate(lengths)), dp_size, math.ceil(len(lengths) / dp_size))


def microbatch_count(shares: Sequence[Sequence[int]], settings: BatchSettings) -> int:
    """The micro-batch count every DP rank uses: the largest any share needs."""
    if settings.num_microbatches is not None:
        count = settings.num_microbatches
    else:
        count = max(math.ceil(len(s) / settings.micro_batch_size) for s in shares)
    smallest = min(len(s) for s in shares)
    if smallest < count:
        raise UserValueError(f"a data-parallel rank has {smallest} samples for {count} micro-batches; use fewer "
                         "micro-batches (num_microbatches / micro_batch_size) or more samples per step")
    return count


def plan_microbatches(indices: Sequence[int], lengths: Sequence[int], count: int) -> list[list[int]]:
    """Split one rank's samples into ``count`` non-empty micro-batches balanced by tokens."""
    items = [(i, lengths[i]) for i in indices]
    return _balanced_bins(items, count, math.ceil(len(items) / count))


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit-decreasing packing of local sample positions into rows of ``capacity`` tokens."""
    rows: list[list[int]] = []
    room: list[int] = []
    for k in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        fit = next((r for r in range(len(rows)) if room[r] >= lengths[k]), None)
        if fit is None:
            rows.append([])
            room.append(capacity)
            fit = len(rows) - 1
        rows[fit].append(k)
        room[fit] -= lengths[k]
    return [sorted(r) for r in rows]


def _as_long(ids) -> torch.Tensor:
    return torch.as_tensor(ids, dtype=torch.long).reshape(-1)


def _per_token(samples: Sequence[PolicySample], field: str, r_max: int) -> torch.Tensor | None:
    values = [getattr(s, field) for s in samples]
    if all(v is None for v in values):
        return None
    out = torch.zeros(len(samples), r_max, dtype=torch.float32)
    for k, (s, v) in enumerate(zip(samples, values)):
        if v is None:
            raise ValueError(f"{field} is set for some samples of the batch but not for all")
        v = torch.as_tensor(v, dtype=torch.float32).reshape(-1)
        if v.numel() != len(s.response_ids):
            raise ValueError(f"{field} has {v.numel()} entries for a response of {len(s.response_ids)} tokens")
        out[k, : v.numel()] = v
    return out


def _row_layout(lengths: list[int], settings: BatchSettings) -> tuple[list[list[int]], int]:
    """Rows (lists of local sample positions) and the common row length S."""
    if settings.packed:
        capacity = max(settings.pack_length or sum(lengths), max(lengths))
        rows = _pack_rows(lengths, capacity)
        width = max(sum(lengths[k] for k in row) for row in rows)
    else:
        rows = [[k] for k in range(len(lengths))]
        width = max(lengths)
    return rows, _round_up(width, settings.pad_to_multiple)


def microbatch_shape(samples: Sequence[PolicySample], settings: BatchSettings) -> tuple[int, int]:
    """(rows B, row length S) that :func:`build_microbatch` gives these samples without ``shape``."""
    rows, width = _row_layout([s.length for s in samples], settings)
    return len(rows), width


def build_microbatch(samples: Sequence[PolicySample], seq_index: Sequence[int], settings: BatchSettings,
                     shape: tuple[int, int] | None = None) -> MicroBatch:
    """Tensors of one micro-batch from its samples (``seq_index``: their indices in the caller's list).

    ``shape`` (B, S) pads the micro-batch up to that many rows and that row length, e.g. one common
    shape for all micro-batches of a pipeline-parallel step (megatron's p2p buffers have one shape).
    """
    if not samples:
        raise ValueError("a micro-batch needs at least one sample")
    prompts = [_as_long(s.prompt_ids) for s in samples]
    responses = [_as_long(s.response_ids) for s in samples]
    if any(p.numel() < 1 for p in prompts) or any(r.numel() < 1 for r in responses):
        raise ValueError("every sample needs a non-empty prompt and a non-empty response")
    lengths = [p.numel() + r.numel() for p, r in zip(prompts, responses)]
    r_max = max(r.numel() for r in responses)
    rows, width = _row_layout(lengths, settings)
    if shape is not None:
        if shape[0] < len(rows) or shape[1] < width:
            raise ValueError(f"shape {shape} is smaller than the micro-batch's own ({len(rows)}, {width})")
        rows = rows + [[] for _ in range(shape[0] - len(rows))]  # empty rows: all padding
        width = shape[1]

    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    position_ids = torch.zeros(len(rows), width, dtype=torch.long)
    targets = torch.zeros(len(rows) * width, dtype=torch.long)
    positions, slots, blocks = [], [], []
    for b, row in enumerate(rows):
        offset = 0
        for k in row:
            seq = torch.cat([prompts[k], responses[k]])
            n, p_len, r_len = lengths[k], prompts[k].numel(), responses[k].numel()
            tokens[b, offset: offset + n] = seq
            position_ids[b, offset: offset + n] = torch.arange(n)
            flat = b * width + offset
            targets[flat: flat + n - 1] = seq[1:]
            # Response token j sits at p_len + j; its logit row is the position before it.
            positions.append(torch.arange(r_len) + flat + p_len - 1)
            slots.append(torch.arange(r_len) + k * r_max)
            blocks.append((b, offset, n))
            offset += n
        if settings.packed and offset < width:
            blocks.append((b, offset, width - offset))  # trailing padding: its own block
            position_ids[b, offset:] = torch.arange(width - offset)

    resp_mask = torch.zeros(len(samples), r_max, dtype=torch.bool)
    for k, r in enumerate(responses):
        resp_mask[k, : r.numel()] = True
    mask, cu = _packed_mask(blocks, len(rows), width) if settings.packed else (None, None)
    return MicroBatch(
        tokens=tokens, position_ids=position_ids, attention_mask=mask, cu_seqlens=cu, targets=targets,
        positions=torch.cat(positions), slots=torch.cat(slots),
        seq_index=torch.as_tensor(list(seq_index), dtype=torch.long), resp_mask=resp_mask,
        advantages=torch.tensor([float(s.advantage) for s in samples], dtype=torch.float32),
        old_logprobs=_per_token(samples, "old_logprobs", r_max),
        ref_logprobs=_per_token(samples, "ref_logprobs", r_max),
        token_weights=_per_token(samples, "token_weights", r_max),
    )


def _packed_mask(blocks: list[tuple[int, int, int]], n_rows: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-diagonal causal mask [B, 1, S, S] (True = masked) and cumulative block offsets."""
    allowed = torch.zeros(n_rows, width, width, dtype=torch.bool)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    cu = [0]
    for b, start, n in blocks:
        allowed[b, start: start + n, start: start + n] = causal[:n, :n]
        cu.append(b * width + start + n)
    return (~allowed).unsqueeze(1), torch.tensor(cu, dtype=torch.int32)
