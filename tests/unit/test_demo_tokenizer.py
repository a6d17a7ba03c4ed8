"""The demo's character tokenizer and tiny model: exact round trips, AutoTokenizer/AutoModel loading, eos."""
import json

import pytest
import torch

from dcpo_mcore.data import arith_alphabet, arith_questions
from dcpo_mcore.demo import EOS_TOKEN, PAD_TOKEN, make_char_tokenizer, make_demo_model

DEMO_MODEL = {"num_layers": 3, "hidden_size": 128, "ffn_hidden_size": 384, "num_attention_heads": 4,
              "num_query_groups": 2, "vocab_size": 64, "max_position_embeddings": 64, "params_dtype": "float32"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("char_tok")
    make_char_tokenizer(out, arith_alphabet(), model_max_length=64)
    from transformers import AutoTokenizer

    return out, AutoTokenizer.from_pretrained(str(out))


def test_one_token_per_character_and_fixed_ids(saved):
    _, tok = saved
    alphabet = arith_alphabet()
    assert len(tok) == 3 + len(alphabet) <= DEMO_MODEL["vocab_size"]
    assert (tok.pad_token, tok.pad_token_id, tok.eos_token, tok.eos_token_id) == (PAD_TOKEN, 0, EOS_TOKEN, 1)
    assert tok.bos_token_id is None
    ids = tok("What is 37+58?", add_special_tokens=False)["input_ids"]
    assert [tok.decode([i]) for i in ids] == list("What is 37+58?")
    one_each = [tok(c, add_special_tokens=False)["input_ids"] for c in alphabet]
    assert one_each == [[i] for i in range(3, 3 + len(alphabet))]
    # encode() adds nothing either: no BOS/EOS template
    assert tok.encode("7*58") == tok("7*58", add_special_tokens=False)["input_ids"]


def test_every_task_string_round_trips_exactly(saved):
    _, tok = saved
    texts = [f"{q}\\boxed{{{a}}}" for q, a in arith_questions(0)[:300]] + ["  12  34 ", "\\boxed{}", "?"]
    enc = tok(texts, add_special_tokens=False)["input_ids"]
    assert tok.batch_decode(enc) == texts
    assert all(len(ids) == len(t) for ids, t in zip(enc, texts))


def test_eos_is_special_in_text_and_skipped_on_decode(saved):
    _, tok = saved
    ids = tok("1+2?\\boxed{3}" + EOS_TOKEN, add_special_tokens=False)["input_ids"]
    assert ids[-1] == tok.eos_token_id and len(ids) == len("1+2?\\boxed{3}") + 1
    assert tok.decode(ids, skip_special_tokens=True) == "1+2?\\boxed{3}"
    assert tok.decode(ids) == "1+2?\\boxed{3}" + EOS_TOKEN
    # incremental decoding (as a server's detokenizer does it) concatenates to the whole text
    assert "".join(tok.decode([i], skip_special_tokens=True) for i in ids) == "1+2?\\boxed{3}"


def test_characters_outside_the_alphabet_are_dropped(saved):
    _, tok = saved
    assert tok.decode(tok("1€z2", add_special_tokens=False)["input_ids"]) == "12"


def test_a_qwen2_model_dir_loads_the_same_tokenizer(tmp_path, saved):
    # transformers 5 rebuilds the tokenizer of a model_type=qwen2 directory as Qwen2Tokenizer from the
    # vocabulary alone (its own split regex, byte-level pipeline, NFC); so do SGLang's loaders. It must
    # encode and decode exactly as the tokenizer we built.
    from transformers import AutoTokenizer

    _, tok = saved
    out = make_demo_model(tmp_path / "m", DEMO_MODEL, tok, seed=0)
    loaded = AutoTokenizer.from_pretrained(str(out))
    texts = [f"{q}\\boxed{{{a}}}" for q, a in arith_questions(1)[:300]] + ["  12  34 ", "?", "What is 1+2?"]
    want = tok(texts, add_special_tokens=False)["input_ids"]
    assert loaded(texts, add_special_tokens=False)["input_ids"] == want
    assert loaded.batch_decode(want) == texts
    assert (loaded.eos_token_id, loaded.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)


def test_saved_files_are_plain_hf_tokenizer_files(saved):
    out, _ = saved
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["eos_token"] == EOS_TOKEN and config["pad_token"] == PAD_TOKEN
    assert (out / "tokenizer.json").is_file()


def test_bad_alphabet_is_refused():
    with pytest.raises(ValueError, match="non-empty"):
        make_char_tokenizer(None, "")
    with pytest.raises(ValueError, match="single characters"):
        make_char_tokenizer(None, ["ab", "c"])


def test_demo_model_loads_with_the_config_architecture(tmp_path, saved):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, tok = saved
    out = make_demo_model(tmp_path / "m", DEMO_MODEL, tok, seed=5)
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == ("qwen2", 3, 128, 384)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (4, 2, 64)
    assert cfg.eos_token_id == tok.eos_token_id and cfg.pad_token_id == tok.pad_token_id
    assert 0.55e6 < sum(p.numel() for p in model.parameters()) < 0.65e6  # the calibrated ~0.6M
    assert next(model.parameters()).dtype == torch.float32
    assert AutoTokenizer.from_pretrained(str(out)).get_vocab() == tok.get_vocab()
    # same seed, same bytes; another seed, other weights
    again = make_demo_model(tmp_path / "m2", DEMO_MODEL, tok, seed=5)
    assert (out / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()
    other = make_demo_model(tmp_path / "m3", DEMO_MODEL, tok, seed=6)
    assert (out / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()


def test_demo_model_refuses_a_vocab_smaller_than_the_tokenizer(tmp_path, saved):
    _, tok = saved
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        make_demo_model(tmp_path / "m", {**DEMO_MODEL, "vocab_size": 8}, tok)
