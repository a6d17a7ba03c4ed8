"""The demo's tiny random Qwen2 model, built from the config's ``model`` section (nothing downloaded).

It reuses the house builders of :mod:`dcpo_mcore.hf.tiny` (config class, RoPE defaults and the seeded
weight draw), so the weights depend only on the seed, and writes one HF directory -- ``config.json``,
``model.safetensors`` and the given tokenizer -- that ``AutoModelForCausalLM``, SGLang and
``PolicyEngine.from_hf`` all load.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from dcpo_mcore.engine.hf_arch import HF_SIZE_KEYS
from dcpo_mcore.hf.tiny import _config, _model_class, _randomize, _rope
from dcpo_mcore.errors import UserValueError

__all__ = ["make_demo_model"]

# Our ``model`` section field -> Qwen2Config keyword (vocab_size is handled apart: the tokenizer's size).
_FIELDS = {ours: hf for ours, hf in HF_SIZE_KEYS.items() if ours != "vocab_size"}


def _get(cfg: Any, name: str) -> Any:
    return cfg.get(name) if isinstance(cfg, Mapping) else getattr(cfg, name, None)


def make_demo_model(out_dir: str | Path, model_cfg: Any, tokenizer, seed: int = 0, *,
                    family: str = "qwen2", tie_word_embeddings: bool = False) -> Path:
    """Save a random ``family`` causal LM with ``model_cfg``'s architecture plus ``tokenizer`` to ``out_dir``.

    ``model_cfg``: the config's ``model`` section (``ModelConfig``) or a mapping with the same field
    names (num_layers, hidden_size, ffn_hidden_size, num_attention_heads, num_query_groups, vocab_size,
    max_position_embeddings, params_dtype). ``vocab_size`` may exceed the tokenizer's size (the extra
    rows are never produced by the tokenizer) but not be smaller; unset, it is the tokenizer's size.
    eos and pad come from the tokenizer, so SGLang stops at the tokenizer's eos. Returns ``out_dir``.
    """
    out = Path(out_dir)
    missing = [f for f in ("num_layers", "hidden_size", "num_attention_heads") if not _get(model_cfg, f)]
    if missing:
        raise UserValueError(f"model config lacks {', '.join(missing)}: the demo builds its model from them")
    kwargs = {hf: _get(model_cfg, ours) for ours, hf in _FIELDS.items()}
    hidden, heads = kwargs["hidden_size"], kwargs["num_attention_heads"]
    kwargs["intermediate_size"] = kwargs["intermediate_size"] or 4 * hidden
    kwargs["num_key_value_heads"] = kwargs["num_key_value_heads"] or heads
    kwargs["max_position_embeddings"] = kwargs["max_position_embeddings"] or 2048
    if hidden % heads:
        raise UserValueError(f"hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    n_tok = len(tokenizer)
    vocab = _get(model_cfg, "vocab_size") or n_tok
    if vocab < n_tok:
        raise UserValueError(f"model vocab_size {vocab} is smaller than the tokenizer's {n_tok} tokens; raise "
                         "model.vocab_size")
    if tokenizer.eos_token_id is None:
        raise UserValueError("the tokenizer has no eos token; SGLang would never stop generating")
    dtype = getattr(torch, _get(model_cfg, "params_dtype") or "float32")
    config = _config(family, **kwargs, vocab_size=vocab, head_dim=hidden // heads,
                     tie_word_embeddings=tie_word_embeddings, rope_parameters=_rope(family, None),
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    model = _model_class(family)(config)
    _randomize(model, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.to(dtype).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
