"""The tiny model/tokenizer factory: saves, reloads with the Auto classes, chats, round-trips text,
and is deterministic."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402

from dcpo_mcore.engine.hf_arch import ArchSpec, RopeScaling  # noqa: E402
from dcpo_mcore.hf.tiny import CHAT_TEMPLATE, make_bpe_tokenizer, make_tiny_hf_model  # noqa: E402

FAMILIES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}
TEXTS = ["What is 37+58? The answer is \\boxed{95}.", "  two  spaces\nand a newline\t tab",
         "unicode: é ü 中文 🙂", "<|im_start|> looks special but is text", ""]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return {f: make_tiny_hf_model(f, tmp_path_factory.mktemp(f), tie_word_embeddings=f == "qwen3",
                                  rope_scaling=f == "llama") for f in FAMILIES}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_saves_and_reloads_with_auto_classes(tiny, family):
    path = tiny[family]
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == FAMILIES[family]
    assert (path / "model.safetensors").exists()
    assert len(tok) <= model.config.vocab_size
    assert model.config.eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert model.config.pad_token_id == tok.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    ids = torch.tensor([tok.encode(TEXTS[0])])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size) and torch.isfinite(logits).all()
    assert logits.std() > 1e-3  # random, not a degenerate all-equal output


@pytest.mark.parametrize("family", list(FAMILIES))
def test_architecture_read_back(tiny, family):
    spec = ArchSpec.from_hf_config(tiny[family])
    assert (spec.family, spec.num_layers, spec.hidden_size, spec.head_dim) == (family, 2, 64, 16)
    assert (spec.num_attention_heads, spec.num_query_groups, spec.ffn_hidden_size) == (4, 2, 128)
    assert spec.tie_word_embeddings == (family == "qwen3") and spec.torch_dtype == "float32"
    assert spec.rope_scaling == (RopeScaling(8.0, 1.0, 4.0, 8192) if family == "llama" else None)
    assert spec.vocab_size % 128 != 0  # the default exercises megatron's vocab padding


def test_tied_checkpoint_has_no_lm_head_and_norms_are_not_ones(tiny):
    tensors = load_file(tiny["qwen3"] / "model.safetensors")
    assert "lm_head.weight" not in tensors and "model.layers.0.self_attn.q_norm.weight" in tensors
    norms = [t for n, t in tensors.items() if n.endswith("norm.weight")]
    assert norms and all(not torch.equal(t, torch.ones_like(t)) for t in norms)
    assert all(0.5 < t.mean() < 1.5 for t in norms)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny["qwen3"])
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_chat_template_renders(tiny):
    tok = transformers.AutoTokenizer.from_pretrained(tiny["qwen2"])
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 1+1?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 1+1?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    no_prompt = tok.apply_chat_template(messages + [{"role": "assistant", "content": "2"}], tokenize=False)
    assert no_prompt.endswith("<|im_start|>assistant\n2<|im_end|>\n")
    ids = tok.encode(text, add_special_tokens=False)
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3  # specials are single tokens


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_round_trips_text(tiny, text):
    tok = transformers.AutoTokenizer.from_pretrained(tiny["llama"])
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert max(ids, default=0) < len(tok)


def test_deterministic_given_seed(tmp_path):
    a = load_file(make_tiny_hf_model("llama", tmp_path / "a", seed=3) / "model.safetensors")
    b = load_file(make_tiny_hf_model("llama", tmp_path / "b", seed=3) / "model.safetensors")
    c = load_file(make_tiny_hf_model("llama", tmp_path / "c", seed=4) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], c["model.layers.0.mlp.up_proj.weight"])
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_options_dtype_vocab_and_sizes(tmp_path):
    path = make_tiny_hf_model("qwen2", tmp_path, num_layers=3, hidden_size=32, num_heads=4, num_kv_heads=1,
                              ffn=48, vocab_size=640, dtype=torch.bfloat16)
    tensors = load_file(path / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    assert tensors["model.embed_tokens.weight"].shape == (640, 32)
    assert tensors["model.layers.2.self_attn.k_proj.bias"].shape == (8,)
    assert json.loads((path / "config.json").read_text())["dtype"] == "bfloat16"


def test_bpe_tokenizer_custom_corpus_and_limits(tmp_path):
    tok = make_bpe_tokenizer(tmp_path, vocab_size=300, corpus=["abc abc abd"] * 50)
    assert 259 < len(tok) <= 300  # bytes + 3 specials + the few merges this corpus offers
    assert tok.chat_template == CHAT_TEMPLATE and (tmp_path / "tokenizer.json").exists()
    with pytest.raises(ValueError, match="too small for a byte-level BPE"):
        make_bpe_tokenizer(None, vocab_size=100)


def test_factory_errors(tmp_path):
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        make_tiny_hf_model("qwen2", tmp_path / "a", vocab_size=270)
    with pytest.raises(ValueError, match="rope_scaling is only supported for llama"):
        make_tiny_hf_model("qwen2", tmp_path / "b", rope_scaling=True)
    with pytest.raises(ValueError, match="unknown family 'gpt2'"):
        make_tiny_hf_model("gpt2", tmp_path / "c")
