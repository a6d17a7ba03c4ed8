"""Rank-side checks of :mod:`dcpo_mcore.engine.hf_mapping` against real megatron-core GPTModels.

Run through :mod:`tests.dist.launcher` with ``world_size`` = the largest TP size. For each TP size
and each case (an HF config and its tensors) every rank builds, with
``get_gpt_layer_local_spec(normalization="RMSNorm")`` on CPU:

* the whole model at this TP size, reports its parameter names/shapes, loads the converted shard
  with ``load_state_dict(strict=True)`` and reports whether every parameter now equals it bitwise;
* the two stages of a PP2 split (``pre_process``-only / ``post_process``-only models of half the
  layers), reporting their names/shapes, so the per-stage naming is checked against megatron itself;
* optionally (``forward=True``, needs :mod:`dcpo_mcore.engine.cpu_compat`) the logits of the loaded
  model, gathered over TP, for comparison with Hugging Face's.

Nothing is asserted here: results are returned and the test asserts.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from dcpo_mcore.engine.hf_arch import ArchSpec, padded_vocab_size
from dcpo_mcore.engine.hf_mapping import hf_to_mcore_shard


def _build(arch: ArchSpec, tp: int, num_layers: int, pre: bool, post: bool):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    cfg = TransformerConfig(
        num_layers=num_layers, hidden_size=arch.hidden_size, ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_attention_heads, num_query_groups=arch.num_query_groups,
        kv_channels=arch.head_dim, layernorm_epsilon=arch.rms_norm_eps, tensor_model_parallel_size=tp,
        normalization="RMSNorm", gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False,
        add_qkv_bias=arch.qkv_bias, qk_layernorm=arch.qk_norm, hidden_dropout=0.0, attention_dropout=0.0,
        use_cpu_initialization=True, bias_activation_fusion=False, masked_softmax_fusion=False,
        persist_layer_norm=False, bias_dropout_fusion=False, apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
    )
    scaling = arch.rope_scaling
    # megatron-core 0.16.1 exposes only the llama3 factor; the tiny models use its fixed 1 / 4 / 8192.
    assert scaling is None or (scaling.low_freq_factor, scaling.high_freq_factor,
                               scaling.original_max_position_embeddings) == (1.0, 4.0, 8192)
    return GPTModel(
        config=cfg, transformer_layer_spec=get_gpt_layer_local_spec(qk_layernorm=arch.qk_norm, normalization="RMSNorm"),
        vocab_size=padded_vocab_size(arch.vocab_size, tp), max_sequence_length=arch.max_position_embeddings,
        pre_process=pre, post_process=post, share_embeddings_and_output_weights=arch.tie_word_embeddings,
        position_embedding_type="rope", rotary_base=int(arch.rope_theta), rope_scaling=scaling is not None,
        rope_scaling_factor=scaling.factor if scaling else 8.0, parallel_output=False,
    )


def _shapes(model) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("_extra_state")}


def _load(model, shard: dict) -> tuple[bool, str]:
    # _extra_state entries carry no weights (None for the local spec); keep the model's own.
    full = {k: v for k, v in model.state_dict().items() if k.endswith("_extra_state")}
    full.update(shard)
    try:
        model.load_state_dict(full, strict=True)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        return False, f"{type(exc).__name__}: {exc}"
    params = dict(model.named_parameters())
    same = all(params[k].dtype == v.dtype and torch.equal(params[k].detach(), v) for k, v in shard.items())
    return same, "" if same else "a parameter differs from the converted shard after loading"


def _logits(model, input_ids: torch.Tensor, vocab: int) -> torch.Tensor:
    model.eval()
    pos = torch.arange(input_ids.shape[1]).unsqueeze(0).expand_as(input_ids)
    with torch.no_grad():
        out = model(input_ids, pos, attention_mask=None)
    return out[..., :vocab].float()


def check_cases(cases: list[dict], tp_sizes: tuple[int, ...] = (1, 2), forward: bool = False) -> dict[int, list[dict]]:
    """``{tp: [result per case]}``; every case is {"config": HF config dict, "hf": {name: tensor},
    "input_ids": [1, S] (forward only)}. One launch covers several TP sizes (megatron's parallel
    state is rebuilt for each), since starting the ranks costs far more than the checks."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    if forward:
        from dcpo_mcore.engine.cpu_compat import apply_cpu_compat

        apply_cpu_compat()
    out = {}
    for tp in tp_sizes:
        parallel_state.initialize_model_parallel(tp, 1)
        model_parallel_cuda_manual_seed(0)
        out[tp] = [_check_case(case, tp, parallel_state.get_tensor_model_parallel_rank(), forward)
                   for case in cases]
        parallel_state.destroy_model_parallel()
    return out


def _check_case(case: dict, tp: int, rank: int, forward: bool) -> dict:
    arch = ArchSpec.from_hf_config(case["config"])
    model = _build(arch, tp, arch.num_layers, True, True)
    shard = hf_to_mcore_shard(case["hf"].__getitem__, arch, tp_rank=rank, tp_size=tp)
    loaded, why = _load(model, shard)
    half = arch.num_layers // 2
    res = {"tp_rank": rank, "full": _shapes(model), "loaded": loaded, "why": why,
           "pp2": [_shapes(_build(arch, tp, half, True, False)), _shapes(_build(arch, tp, half, False, True))]}
    if forward:
        res["logits"] = _logits(model, case["input_ids"], arch.vocab_size)
    return res
