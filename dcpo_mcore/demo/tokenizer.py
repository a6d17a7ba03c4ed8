"""A character-level tokenizer for the demo's arithmetic task: one token per character.

Built with the ``tokenizers`` library and wrapped in ``PreTrainedTokenizerFast``; ``save_pretrained`` writes
``tokenizer.json`` + ``tokenizer_config.json``. It is a byte-level BPE with NO merges: the vocabulary is the
byte-level symbols of the alphabet (GPT-2's byte-to-unicode map, so a space is stored as ``Ġ``), which makes
every ASCII character exactly one token. Why this shape rather than a plain WordLevel character model:
transformers 5 rebuilds the tokenizer of a ``model_type: qwen2`` checkpoint as ``Qwen2Tokenizer`` (byte-level
BPE, Qwen's split regex, NFC) from just the vocabulary and merges of ``tokenizer.json``, whatever pipeline the
file declares. A WordLevel vocabulary then silently lost its spaces; this one encodes identically under both
loaders (checked in tests/unit/test_demo_tokenizer.py), and under SGLang's.

``decode(encode(text)) == text`` for every text made of the alphabet's characters. A character outside the
alphabet is dropped (as ``Qwen2Tokenizer`` does it: no unknown-token fallback), so the alphabet must cover
every prompt and answer -- ``dcpo_mcore.data.arith_alphabet()`` does for the arithmetic task.

Ids: 0 ``<|endoftext|>`` (pad), 1 ``<|im_end|>`` (eos: the model ends its answer with it, SGLang stops on it),
2 ``<unk>`` (reserved, never produced), then the alphabet's characters in the given order. No BOS is added and
there is no chat template (the demo feeds the raw question, ``data.chat_template=none``): the prompt is
``What is 37+58?`` and the model continues with ``\\boxed{95}<|im_end|>``, so the closing ``?`` marks where
the answer starts.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["EOS_TOKEN", "PAD_TOKEN", "SPECIAL_TOKENS", "UNK_TOKEN", "make_char_tokenizer"]

PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<|endoftext|>", "<|im_end|>", "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)


def make_char_tokenizer(out_dir: str | Path | None, alphabet: str, *, model_max_length: int = 2048):
    """Build (and save, if ``out_dir``) a ``PreTrainedTokenizerFast`` with one token per character.

    ``alphabet``: the characters to cover, e.g. ``dcpo_mcore.data.arith_alphabet()``; duplicates are
    ignored (first occurrence wins), so ids are stable for a given alphabet. For an ASCII alphabet
    ``len(tokenizer)`` is ``3 + len(set(alphabet))``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = list(dict.fromkeys(alphabet))
    if not chars:
        raise ValueError("make_char_tokenizer needs a non-empty alphabet")
    if any(len(c) != 1 for c in chars):  # a list of strings was passed
        raise ValueError(f"the alphabet must be single characters, got {[c for c in chars if len(c) != 1]}")
    to_symbol = _bytes_to_unicode()
    # A non-ASCII character is several bytes, hence several tokens (each byte's symbol once).
    symbols = dict.fromkeys(to_symbol[b] for c in chars for b in c.encode("utf-8"))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({sym: len(SPECIAL_TOKENS) + i for i, sym in enumerate(symbols)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, unk_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False, model_max_length=model_max_length,
    )
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        fast.save_pretrained(str(out_dir))
    return fast


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what ``pre_tokenizers.ByteLevel`` applies)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    out, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return out
