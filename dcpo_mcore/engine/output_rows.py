"""Logits only at the rows the loss reads: the output layer sees the response positions' hidden states.

The log-prob of response token j is read from the logits one position before it (engine/batching.py);
every prompt position, padding slot and packed-row gap is never read. Megatron's ``GPTModel`` still
runs its output layer over the whole ``[S, B, H]`` sequence, which at a real vocabulary is the largest
tensor of the step: ``[S*B, V/TP]`` logits (1.2 GB per 2,048-token sequence at Qwen2.5's 151,936 rows
in fp32) and the largest GEMM after the MLPs. A forward pre-hook on each last-stage ``output_layer``
replaces its input by the ``[N, 1, H]`` hidden states of the micro-batch's ``N`` response positions,
so the model returns ``[1, N, V/TP]`` logits in response order (docs/performance.md [response-logits]).

Sequence parallel: the layer's input is then this rank's ``S/TP`` slice of the sequence. The hook
all-gathers it first (backward: split, not reduce-scatter, because the layer below becomes an
ordinary column-parallel layer whose input grad megatron all-reduces) and switches the layer's
``sequence_parallel`` off for that one call, the way megatron's own last-token inference path does.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

__all__ = ["ResponseRowSelector", "rows_of_sequence_first"]


def rows_of_sequence_first(flat_positions: torch.Tensor, seq_len: int, batch: int) -> torch.Tensor:
    """Rows of a ``[S, B, H]`` tensor viewed as ``[S*B, H]`` for flat positions ``b*S + s`` of ``[B, S]``."""
    if flat_positions.numel() and int(flat_positions.max()) >= seq_len * batch:
        raise ValueError(f"position {int(flat_positions.max())} is outside a [{batch}, {seq_len}] micro-batch")
    return (flat_positions % seq_len) * batch + torch.div(flat_positions, seq_len, rounding_mode="floor")


class ResponseRowSelector:
    """Forward hooks on the output layers of ``chunks`` that keep only the selected positions' rows."""

    def __init__(self, chunks):
        self._positions: torch.Tensor | None = None
        self._sp_switched_off: list = []
        self._handles = []
        for chunk in chunks:
            for name, module in chunk.named_modules():
                if name.rsplit(".", 1)[-1] == "output_layer":
                    self._handles.append(module.register_forward_pre_hook(self._select, with_kwargs=True))
                    self._handles.append(module.register_forward_hook(self._restore))

    @property
    def active(self) -> bool:
        """Whether this rank holds an output layer (the last pipeline stage)."""
        return bool(self._handles)

    def remove(self) -> None:
        """Detach the hooks: the output layer computes every position again (tests compare both)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    @contextmanager
    def only(self, flat_positions: torch.Tensor):
        """Within this block, output layers compute logits at ``flat_positions`` of the model's input only."""
        self._positions = flat_positions
        try:
            yield
        finally:
            self._positions = None

    def _select(self, module, args, kwargs):
        if self._positions is None:
            return None
        hidden = args[0]
        if getattr(module, "sequence_parallel", False):
            hidden = gather_from_sequence_parallel_region(
                hidden, tensor_parallel_output_grad=False, group=ps.get_tensor_model_parallel_group())
            module.sequence_parallel = False
            self._sp_switched_off.append(module)
        seq_len, batch, width = hidden.shape
        # Row indices on the CPU (the micro-batch is built there: no device sync for the range check), then moved.
        rows = rows_of_sequence_first(self._positions.cpu(), seq_len, batch).to(hidden.device, non_blocking=True)
        picked = hidden.reshape(seq_len * batch, width).index_select(0, rows).unsqueeze(1)
        return (picked, *args[1:]), kwargs

    def _restore(self, module, args, output):
        if module in self._sp_switched_off:
            module.sequence_parallel = True
            self._sp_switched_off.remove(module)
        return None
