"""The CPU demo's local pieces: a character tokenizer, a tiny random Qwen2 model, and the pretraining stage.

Nothing here downloads anything. The stages, in the order the demo runs them:

* :func:`make_char_tokenizer` - one token per character of the arithmetic task, plus eos/pad/unk;
* :func:`make_demo_model` - a random ``Qwen2ForCausalLM`` of the config's ``model`` architecture;
* :func:`pretrain` - next-token cross-entropy on ``question -> \\boxed{answer}<eos>`` through our own
  megatron :class:`~dcpo_mcore.engine.policy.PolicyEngine` until held-out greedy accuracy reaches a
  target, then an HF checkpoint directory ready for SGLang and ``PolicyEngine.from_hf``.

The pretraining names (``pretrain``, ``PretrainSettings``, ``PretrainResult``, ``records_from_files``) live in
:mod:`.pretraining` and are imported lazily from here (they pull in megatron); the tokenizer and model
builders do not.
"""
from .model import make_demo_model
from .tokenizer import EOS_TOKEN, PAD_TOKEN, UNK_TOKEN, make_char_tokenizer

_LAZY = ("PretrainResult", "PretrainSettings", "pretrain", "records_from_files")
__all__ = ["EOS_TOKEN", "PAD_TOKEN", "UNK_TOKEN", *_LAZY, "make_char_tokenizer", "make_demo_model"]


def __getattr__(name: str):  # lazy: ``from dcpo_mcore.demo import pretrain`` imports megatron only then
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.pretraining"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
