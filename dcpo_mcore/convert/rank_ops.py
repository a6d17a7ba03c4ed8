"""Megatron-side steps of a conversion, run on every rank after the model-parallel state is set up.

Chunk ``v`` of PP rank ``p`` is the mapping's stage ``v * pp + p`` of ``pp * vpp`` (see :mod:`.stages`).

Export streaming (:func:`export_to_sink`): global rank 0 writes every HF tensor as
:func:`dcpo_mcore.engine.hf_export.stream_hf_tensors` hands it over (the same stream the live weight
sync to SGLang uses), so no rank ever holds the whole model.
"""
from __future__ import annotations

from typing import Callable

import torch
from megatron.core import parallel_state as ps
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

from dcpo_mcore.engine.dist_ckpt import load_across_layer_specs, load_module_state, synchronous_save
from dcpo_mcore.engine.hf_arch import ArchSpec
from dcpo_mcore.engine.hf_export import stream_hf_tensors
from dcpo_mcore.engine.hf_mapping import hf_to_mcore_shard
from dcpo_mcore.engine.layout import ParallelLayout, Precision
from dcpo_mcore.engine.model_builder import build_model_chunks, build_transformer_config, select_layer_spec

from dcpo_mcore.errors import one_line

from .errors import ConvertError
from .stages import virtual_stage


class Model:
    """This rank's GPTModel chunks with what the conversion steps need to know about them."""

    def __init__(self, arch: ArchSpec, layout: ParallelLayout, dtype: torch.dtype):
        self.arch, self.layout, self.dtype = arch, layout, dtype
        self.config = build_transformer_config(arch, layout, Precision(params_dtype=dtype))
        # Every weight is overwritten from the HF files or the checkpoint; megatron's random init
        # would only cost time (minutes for a 14B model on CPU).
        self.config.perform_initialization = False
        spec, self.te_names = select_layer_spec(arch)
        self.chunks = build_model_chunks(arch, self.config, spec)
        # Linear layers are created in params_dtype, but the plain-torch norms (local spec) always in
        # float32 (Megatron-LM casts the whole model in its Float16Module). Cast the *parameters* only,
        # so every weight round-trips in the checkpoint's dtype; buffers such as RoPE frequencies keep
        # their precision.
        for chunk in self.chunks:
            for p in chunk.parameters():
                if p.dtype != dtype:
                    p.data = p.data.to(dtype)
        self.tp, self.pp = layout.tp, layout.pp
        self.num_stages = layout.pp * (layout.vpp or 1)
        self.tp_rank = ps.get_tensor_model_parallel_rank()
        self.pp_rank = ps.get_pipeline_model_parallel_rank()

    def stage(self, v: int) -> int:
        return virtual_stage(v, self.pp, self.pp_rank)

    def sharded_state_dict(self) -> dict:
        return sharded_model_state(self.chunks)

    def local_tensors(self) -> dict[tuple[int, str], torch.Tensor]:
        """``{(stage, local megatron name): tensor}`` of this rank (no ``_extra_state``)."""
        out = {}
        for v, chunk in enumerate(self.chunks):
            for name, t in chunk.state_dict().items():
                if not name.endswith("_extra_state"):
                    out[(self.stage(v), name)] = t
        return out


def load_from_hf(model: Model, get_hf_tensor: Callable[[str], torch.Tensor]) -> None:
    """Fill every chunk with its shard of the HF weights (read lazily, one tensor at a time)."""
    for v, chunk in enumerate(model.chunks):
        shard = hf_to_mcore_shard(get_hf_tensor, model.arch, model.tp_rank, model.tp, model.stage(v),
                                  model.num_stages, te_names=model.te_names)
        # _extra_state carries no weights (None for the local spec, FP8 metadata for TE): keep the model's.
        full = {k: v_ for k, v_ in chunk.state_dict().items() if k.endswith("_extra_state")}
        full.update(shard)
        chunk.load_state_dict(full, strict=True)
        del shard, full


def sharded_model_state(chunks: list) -> dict:
    """``{"model": ...}`` for one chunk, ``{"model0": ..., "model1": ...}`` for virtual pipeline stages.

    Megatron-LM's convention, so its tools and ours read each other's model checkpoints. Only the
    ShardedTensor keys (global megatron names) decide what is loaded, so any layout reads any other.
    """
    if len(chunks) == 1:
        return {"model": chunks[0].sharded_state_dict()}
    return {f"model{v}": c.sharded_state_dict() for v, c in enumerate(chunks)}


def save_checkpoint(model: Model, ckpt_dir: str) -> None:
    save_chunks(model.chunks, ckpt_dir)


def save_chunks(chunks: list, ckpt_dir: str) -> None:
    """A synchronous torch_dist save of every chunk (rank 0 must have created ``ckpt_dir``)."""
    synchronous_save(sharded_model_state(chunks), ckpt_dir)


def load_checkpoint(model: Model, ckpt_dir: str) -> None:
    load_chunks(model.chunks, ckpt_dir)


def load_chunks(chunks: list, ckpt_dir: str) -> None:
    """Load a torch_dist model checkpoint written at any layout into these chunks (this layout).

    For the trainer too: build the chunks with the engine's builder at any TP/PP/VPP, then call this.
    Vocabulary padding depends on TP (a multiple of 128*TP rows). Megatron marks the embedding and
    output-layer ShardedTensors ``allow_shape_mismatch``: on load the local shard is zero-filled and
    only the rows that exist in the checkpoint are read, so loading into more rows leaves the extra
    padding rows zero and loading into fewer drops padding rows. The real vocabulary rows are always
    the first ``vocab_size`` and always load exactly (tested at TP1 <-> TP2 with 384 vs 512 rows).
    """
    keys = ["model"] if len(chunks) == 1 else [f"model{v}" for v in range(len(chunks))]
    try:
        state, _, absent = load_across_layer_specs(sharded_model_state(chunks), ckpt_dir)
        if absent:
            raise ConvertError(f"checkpoint {ckpt_dir} lacks {len(absent)} tensor(s) of this model, e.g. "
                               f"{sorted(absent)[:3]}; is it a checkpoint of this architecture?")
        for key, chunk in zip(keys, chunks):
            load_module_state(chunk, state[key])
    except (ConvertError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - torch DCP's CheckpointException is a BaseException
        cause = _root_cause(exc)
        raise ConvertError(f"checkpoint {ckpt_dir} is corrupt or does not fit this model "
                           f"({one_line(cause, None, typed=True)})") from None


def _root_cause(exc: BaseException) -> BaseException:
    """The first rank's own exception inside torch DCP's CheckpointException (whose text is a traceback)."""
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:
        first = failures[min(failures)]
        if isinstance(first, tuple) and first and isinstance(first[0], BaseException):
            return _root_cause(first[0])
    return exc



# ---------------------------------------------------------------------------------------------
# export


def export_to_sink(model: Model, sink: Callable[[str, torch.Tensor], None] | None) -> None:
    """Stream full HF tensors to ``sink(name, tensor)`` on global rank 0 (``sink`` unused elsewhere)."""
    stream_hf_tensors(model.chunks, model.arch, model.te_names, sink)



@torch.no_grad()
def forward_logprobs(model: Model, input_ids: torch.Tensor) -> torch.Tensor | None:
    """float32 ``log_softmax`` over the real vocabulary, [B, S, V], on the last stage's TP rank 0.

    Runs megatron's own pipeline schedule (forward only, one sequence per micro-batch), so PP and VPP
    are exercised exactly as in training; logits are gathered over TP and the padding rows cut off.
    """
    B, S = input_ids.shape
    device = next(model.chunks[0].parameters()).device
    seqs = [input_ids[i:i + 1].to(device) for i in range(B)]
    collected: list[torch.Tensor] = []
    for c in model.chunks:
        c.eval()

    def loss_func(output: torch.Tensor):
        logits = gather_from_tensor_model_parallel_region(output)[..., :model.arch.vocab_size]
        collected.append(torch.log_softmax(logits.float(), dim=-1).cpu())
        return output.new_zeros(()), {}

    def forward_step(data_iterator, chunk):
        ids = next(data_iterator)
        pos = torch.arange(S, device=device).unsqueeze(0)
        return chunk(ids, pos, None), loss_func

    iters = [iter(seqs) for _ in model.chunks]
    get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iters if len(iters) > 1 else iters[0],
        model=model.chunks, num_microbatches=B, seq_length=S, micro_batch_size=1, forward_only=True)
    last = ps.is_pipeline_last_stage(ignore_virtual=True)
    if last and model.tp_rank == 0:
        return torch.cat(collected, dim=0)
    return None
