"""Tiny Hugging Face models and tokenizers, built locally in seconds (nothing is downloaded).

* :func:`make_bpe_tokenizer` trains a byte-level BPE on a small built-in corpus (arithmetic questions
  with ``\\boxed{}`` answers and simple English) and saves it as a ``PreTrainedTokenizerFast`` with a
  ChatML-style chat template.
* :func:`make_tiny_hf_model` saves a random ``Qwen2ForCausalLM`` / ``Qwen3ForCausalLM`` /
  ``LlamaForCausalLM`` (safetensors) plus that tokenizer into one directory, ready for
  ``AutoModelForCausalLM.from_pretrained``, SGLang, and the HF <-> megatron conversion.

Weights are drawn from a seeded generator of our own (not the transformers initialiser), so a seed
gives the same bytes whatever transformers does. Norm weights are drawn around 1 rather than left
at exactly 1, so a norm mapped to the wrong place changes the output and tests catch it.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from dcpo_mcore.algo.registry import Registry

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "default_corpus", "make_bpe_tokenizer", "make_tiny_hf_model"]

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
# ChatML, as Qwen uses: each turn is "<|im_start|>{role}\n{content}<|im_end|>\n"; with
# add_generation_prompt the assistant turn is opened and the model continues after it.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# family -> (transformers config class, model class)
_CLASSES: Registry[tuple[str, str]] = Registry("family")
_CLASSES.register("qwen2", ("Qwen2Config", "Qwen2ForCausalLM"))
_CLASSES.register("qwen3", ("Qwen3Config", "Qwen3ForCausalLM"))
_CLASSES.register("llama", ("LlamaConfig", "LlamaForCausalLM"))
_WORDS = ("the a one two cat dog model answer number sum product question think step first then "
          "so is are was add multiply result check final we it this that of to and with".split())
# The Llama-3.1 values, which are also the ones megatron-core 0.16.1's RotaryEmbedding hard-codes
# (it exposes only `rope_scaling_factor`). With head_dim 16 the longest RoPE wavelengths exceed 8192,
# so the scaling does change a tiny model.
_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}


def default_corpus(n: int = 1500, seed: int = 0) -> list[str]:
    """Deterministic training text: arithmetic Q&A in the demo's format plus simple English."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if i % 3 == 0:
            lines.append(f"What is {a}+{b}? The answer is \\boxed{{{a + b}}}.")
        elif i % 3 == 1:
            c = rng.randint(0, 9)
            lines.append(f"What is {c}*{b}? First, {c} times {b} is {c * b}. So \\boxed{{{c * b}}}.")
        else:
            words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 12))]
            lines.append(" ".join(words).capitalize() + rng.choice((".", "!", "?")))
    return lines


def make_bpe_tokenizer(out_dir: str | Path | None, vocab_size: int = 512,
                       corpus: Iterable[str] | None = None, *, model_max_length: int = 2048):
    """Train a byte-level BPE tokenizer and save it (if ``out_dir``) with ``save_pretrained``.

    ``vocab_size`` is an upper bound: a small corpus can run out of merges first (``len(tok)`` tells).
    It covers the 256 byte symbols and the special tokens, so it must be at least 256 + 3. Any text
    round-trips through encode/decode. eos is ``<|im_end|>`` (ends a chat turn), pad ``<|endoftext|>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    minimum = 256 + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size {vocab_size} is too small for a byte-level BPE; use >= {minimum}")
    tok = Tokenizer(models.BPE())
    # No prefix space and a ByteLevel decoder: decode(encode(text)) == text for any text.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(corpus) if corpus is not None else default_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=IM_END, pad_token=ENDOFTEXT, chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False, model_max_length=model_max_length,
    )
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def make_tiny_hf_model(
    family: str, out_dir: str | Path, *, num_layers: int = 2, hidden_size: int = 64, num_heads: int = 4,
    num_kv_heads: int = 2, ffn: int = 128, vocab_size: int | None = None, tie_word_embeddings: bool = False,
    seed: int = 0, rope_scaling: bool | Mapping[str, Any] | None = None, dtype: torch.dtype = torch.float32,
    head_dim: int | None = None, max_position_embeddings: int | None = None, tokenizer_vocab_size: int = 400,
    tokenizer: Any = None,
) -> Path:
    """Save a random ``family`` ("qwen2" | "qwen3" | "llama") causal LM and its tokenizer to ``out_dir``.

    ``vocab_size`` defaults to the tokenizer's size (usually not a multiple of 128, so megatron's
    vocab padding is exercised) and may not be smaller. ``rope_scaling`` (Llama only): True for the
    Llama-3.1 llama3 scaling (factor 8, original context 8192), or a dict of llama3 parameters.
    ``max_position_embeddings`` defaults to 2048, or 4x the original context with rope scaling
    (transformers wants it above ``original_max_position_embeddings``). Returns ``out_dir``.
    """
    out = Path(out_dir)
    model_class = _model_class(family)  # unknown family: fail before writing anything
    rope = _rope(family, rope_scaling)
    if max_position_embeddings is None:
        max_position_embeddings = 4 * rope.get("original_max_position_embeddings", 512)
    if tokenizer is None:
        tokenizer = make_bpe_tokenizer(out, vocab_size=tokenizer_vocab_size, model_max_length=max_position_embeddings)
    else:
        tokenizer.save_pretrained(str(out))
    n_tok = len(tokenizer)
    vocab_size = n_tok if vocab_size is None else vocab_size
    if vocab_size < n_tok:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {n_tok} tokens")
    config = _config(
        family, num_hidden_layers=num_layers, hidden_size=hidden_size, num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads, intermediate_size=ffn, vocab_size=vocab_size,
        tie_word_embeddings=tie_word_embeddings, head_dim=head_dim or hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings, rope_parameters=rope,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model = model_class(config)
    _randomize(model, seed)
    model.to(dtype).save_pretrained(str(out))
    return out


def _model_class(family: str):
    import transformers

    return getattr(transformers, _CLASSES.get(family)[1])


def _config(family: str, **kwargs):
    import transformers

    # Qwen3Config defaults head_dim to 128 whatever the width, so head_dim is always passed.
    return getattr(transformers, _CLASSES.get(family)[0])(**kwargs)


def _rope(family: str, rope_scaling: bool | Mapping[str, Any] | None) -> dict[str, Any]:
    base = {"rope_type": "default", "rope_theta": 10000.0}
    if not rope_scaling:
        return base
    if family != "llama":
        raise ValueError(f"rope_scaling is only supported for llama, not {family!r}")
    scaling = dict(_LLAMA3_ROPE) if rope_scaling is True else {"rope_type": "llama3", **dict(rope_scaling)}
    return {**base, **scaling}


@torch.no_grad()
def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Seeded N(0, 0.02) weights/biases and N(1, 0.1) norm weights (tied weights are drawn once)."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():  # named_parameters() yields a tied weight once
        noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
        is_norm = name.endswith("norm.weight")
        param.copy_(1.0 + 0.1 * noise if is_norm else 0.02 * noise)
