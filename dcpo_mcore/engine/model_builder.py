"""Build a megatron-core GPTModel from a Hugging Face architecture (Qwen2, Qwen3, Llama 2/3).

One function per step: the TransformerConfig from an ArchSpec, the layer spec (Transformer Engine on a GPU
when it imports, the local spec otherwise), and the model chunks for this rank's pipeline stage(s).
Weights are loaded separately (hf_mapping / dist_checkpointing); this module only builds the structure.
"""
from __future__ import annotations

import logging
from functools import lru_cache

import torch
import torch.nn.functional as F
from megatron.core import parallel_state as ps
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer import TransformerConfig

from dcpo_mcore.errors import UserError

from .hf_arch import ArchError, ArchSpec, padded_vocab_size
from .layout import ParallelLayout, Precision

log = logging.getLogger(__name__)

# megatron-core (0.16.1 and 0.19.2 alike) hard-codes these Llama-3 RoPE scaling constants; only the factor is configurable.
_MEGATRON_LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


@lru_cache(maxsize=1)
def transformer_engine_available() -> tuple[bool, str]:
    """(usable, reason). Any exception counts as unusable: a partial TE install raises RuntimeError."""
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    try:
        import transformer_engine  # noqa: F401
        from megatron.core.extensions import transformer_engine as _te_ext  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - TE failures are not always ImportError
        return False, f"{type(exc).__name__}: {exc}"
    return True, "ok"


class LayerSpecError(UserError, ValueError):
    """The requested precision or layout needs Transformer Engine, which is not usable here."""


def select_layer_spec(arch: ArchSpec, want_te: bool = True, *, fp8: str | None = None,
                      sequence_parallel: bool = False):
    """Return (layer_spec, uses_te): TE's spec when it is usable, else megatron's local spec.

    Refused in one line instead of a silent fallback (docs/gpu.md [te-fallback]): FP8 without TE
    (megatron would enter a null FP8 context and train in bf16 while the config says FP8), and sequence
    parallelism on a GPU without TE (the local spec's plain torch norm asserts it away; only the CPU
    compatibility layer teaches it SP)."""
    from megatron.core.models.gpt import gpt_layer_specs as specs

    usable, reason = transformer_engine_available()
    if want_te and usable:
        return specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=arch.qk_norm), True
    why = reason if want_te else "the engine was built with want_te=False"
    if fp8 is not None:
        raise LayerSpecError(f"model.fp8={fp8} needs Transformer Engine, which is not usable here ({why}); "
                             "install it on a GPU node (tools/setup_env.sh --gpu) or set model.fp8=null")
    if sequence_parallel and torch.cuda.is_available():
        raise LayerSpecError(f"parallel.sequence_parallel on a GPU needs Transformer Engine ({why}); install it "
                             "(tools/setup_env.sh --gpu) or set parallel.sequence_parallel=false")
    if torch.cuda.is_available():
        log.warning("Transformer Engine not used (%s); megatron's local layer spec is much slower on a GPU", why)
    else:
        log.info("Transformer Engine not used (%s); using megatron's local layer spec", why)
    return specs.get_gpt_layer_local_spec(qk_layernorm=arch.qk_norm, normalization="RMSNorm"), False


def check_rope_scaling(arch: ArchSpec) -> None:
    if arch.rope_scaling is None:
        return
    got = {k: getattr(arch.rope_scaling, k) for k in _MEGATRON_LLAMA3_ROPE}
    if got != _MEGATRON_LLAMA3_ROPE:
        raise ArchError(f"rope_scaling {got} differs from megatron-core's fixed Llama-3 constants "
                        f"{_MEGATRON_LLAMA3_ROPE}; only the factor can be changed")


def build_transformer_config(arch: ArchSpec, layout: ParallelLayout, precision: Precision,
                             *, dropout: float = 0.0, on_gpu: bool | None = None) -> TransformerConfig:
    on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
    check_rope_scaling(arch)
    recompute = layout.recompute if layout.recompute != "none" else None
    return TransformerConfig(
        num_layers=arch.num_layers, hidden_size=arch.hidden_size, ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_attention_heads, num_query_groups=arch.num_query_groups,
        kv_channels=arch.head_dim, normalization="RMSNorm", layernorm_epsilon=arch.rms_norm_eps,
        gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False, add_qkv_bias=arch.qkv_bias,
        qk_layernorm=arch.qk_norm, hidden_dropout=dropout, attention_dropout=dropout,
        tensor_model_parallel_size=layout.tp, pipeline_model_parallel_size=layout.pp,
        virtual_pipeline_model_parallel_size=layout.vpp, sequence_parallel=layout.sequence_parallel,
        params_dtype=precision.params_dtype, pipeline_dtype=precision.params_dtype,
        bf16=precision.params_dtype == torch.bfloat16, fp16=precision.params_dtype == torch.float16,
        fp8=precision.fp8, fp8_recipe=precision.fp8_recipe if precision.fp8 else "delayed",
        recompute_granularity=recompute,
        recompute_method="uniform" if recompute == "full" else None,
        recompute_num_layers=1 if recompute == "full" else None,
        # CPU: no fused kernels, CPU init, and no torch.cuda.synchronize after batched p2p.
        use_cpu_initialization=not on_gpu, gradient_accumulation_fusion=False, bias_activation_fusion=False,
        masked_softmax_fusion=False, bias_dropout_fusion=False, persist_layer_norm=False,
        apply_rope_fusion=False, batch_p2p_sync=on_gpu,
        # gloo matches p2p messages per peer in posting order; batched p2p posts send_prev before send_next,
        # so with PP=2 (prev == next) interleaved 1F1B silently swaps activations and gradients. The
        # unbatched path keeps the two directions on separate groups. (Found by the engine's VPP test.)
        batch_p2p_comm=on_gpu,
    )


def build_model_chunks(arch: ArchSpec, config: TransformerConfig, layer_spec) -> list[GPTModel]:
    """One GPTModel per virtual pipeline stage held by this rank (one chunk without VPP)."""
    vpp = config.virtual_pipeline_model_parallel_size or 1
    vocab = padded_vocab_size(arch.vocab_size, config.tensor_model_parallel_size)
    chunks = []
    for vp_stage in range(vpp):
        stage = vp_stage if vpp > 1 else None
        chunks.append(GPTModel(
            config=config, transformer_layer_spec=layer_spec, vocab_size=vocab,
            max_sequence_length=arch.max_position_embeddings,
            pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
            post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
            share_embeddings_and_output_weights=arch.tie_word_embeddings,
            position_embedding_type="rope", rotary_base=int(arch.rope_theta),
            rope_scaling=arch.rope_scaling is not None,
            rope_scaling_factor=arch.rope_scaling.factor if arch.rope_scaling else 8.0,
            vp_stage=stage,
        ))
    return chunks
