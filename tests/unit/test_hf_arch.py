"""ArchSpec reads Qwen2 / Qwen3 / Llama config.json in the transformers-4 and -5 layouts, and refuses
what megatron's GPT model cannot express with one clear line."""
import json

import pytest

from dcpo_mcore.engine.hf_arch import ArchError, ArchSpec, RopeScaling, padded_vocab_size

BASE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 128, "vocab_size": 300, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5}


def cfg(arch: str, **extra) -> dict:
    return {"architectures": [arch], **BASE, **extra}


def test_qwen2_transformers4_layout():
    spec = ArchSpec.from_hf_config(cfg("Qwen2ForCausalLM", model_type="qwen2", rope_theta=1e6, rope_scaling=None,
                                       torch_dtype="bfloat16", tie_word_embeddings=True))
    assert spec == ArchSpec(
        family="qwen2", num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
        num_query_groups=2, head_dim=16, vocab_size=300, max_position_embeddings=2048, rms_norm_eps=1e-5,
        rope_theta=1e6, rope_scaling=None, tie_word_embeddings=True, qkv_bias=True, qk_norm=False,
        torch_dtype="bfloat16")
    assert (spec.heads_per_group, spec.q_size, spec.kv_size) == (2, 64, 32)


def test_qwen3_explicit_head_dim_and_transformers5_layout():
    spec = ArchSpec.from_hf_config(cfg("Qwen3ForCausalLM", head_dim=32, dtype="float32",
                                       rope_parameters={"rope_type": "default", "rope_theta": 5e5}))
    assert (spec.family, spec.head_dim, spec.q_size, spec.kv_size) == ("qwen3", 32, 128, 64)
    assert (spec.qk_norm, spec.qkv_bias, spec.rope_theta, spec.rope_scaling) == (True, False, 5e5, None)
    assert spec.torch_dtype == "float32" and spec.tie_word_embeddings is False


LLAMA3 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


@pytest.mark.parametrize("layout", [
    {"rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", **LLAMA3}},  # Llama-3.1 as released
    {"rope_theta": 5e5, "rope_scaling": {"type": "llama3", **LLAMA3}},  # older "type" key
    {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, **LLAMA3}},  # transformers 5
    {"rope_parameters": {"full_attention": {"rope_type": "llama3", "rope_theta": 5e5, **LLAMA3}}},
])
def test_llama3_rope_scaling_in_every_layout(layout):
    spec = ArchSpec.from_hf_config(cfg("LlamaForCausalLM", **layout))
    assert spec.family == "llama" and spec.rope_theta == 5e5 and not spec.qkv_bias and not spec.qk_norm
    assert spec.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 8192)


def test_configs_written_by_transformers5(tmp_path):
    transformers = pytest.importorskip("transformers")
    kw = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=128, vocab_size=300)
    llama = transformers.LlamaConfig(**kw, max_position_embeddings=32768,
                                     rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, **LLAMA3})
    llama.save_pretrained(tmp_path)
    for source in (tmp_path, tmp_path / "config.json", json.loads((tmp_path / "config.json").read_text()), llama):
        spec = ArchSpec.from_hf_config(source)
        assert (spec.family, spec.rope_theta, spec.rope_scaling) == ("llama", 5e5, RopeScaling(8.0, 1.0, 4.0, 8192))
    qwen3 = ArchSpec.from_hf_config(transformers.Qwen3Config(**kw, head_dim=16))
    assert (qwen3.family, qwen3.head_dim, qwen3.rope_theta) == ("qwen3", 16, 10000.0)


def test_defaults_for_old_configs_and_model_type_only():
    minimal = {k: v for k, v in BASE.items() if k not in ("num_key_value_heads", "rms_norm_eps")}
    spec = ArchSpec.from_hf_config({"model_type": "llama", **minimal})
    assert (spec.num_query_groups, spec.rms_norm_eps, spec.rope_theta, spec.torch_dtype) == (4, 1e-6, 10000.0, None)


@pytest.mark.parametrize("config, message", [
    (cfg("GPT2LMHeadModel"), "unsupported architecture GPT2LMHeadModel; supported: Qwen2ForCausalLM"),
    ({"model_type": "mistral", **BASE}, "unsupported architecture model_type='mistral'"),
    ({"architectures": ["Qwen2ForCausalLM"], **{k: v for k, v in BASE.items() if k != "vocab_size"}},
     "missing 'vocab_size'"),
    (cfg("LlamaForCausalLM", num_key_value_heads=3), "num_attention_heads (4) is not a multiple of num_key_value_heads (3)"),
    (cfg("LlamaForCausalLM", num_attention_heads=5), "hidden_size (64) is not a multiple of num_attention_heads (5)"),
    (cfg("LlamaForCausalLM", hidden_size=0), "hidden_size=0, expected a positive integer"),
    (cfg("LlamaForCausalLM", rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope scaling type 'yarn' is not supported"),
    (cfg("LlamaForCausalLM", rope_scaling={"rope_type": "llama3", "factor": 8.0}), "llama3 rope scaling is missing 'low_freq_factor'"),
    (cfg("LlamaForCausalLM", attention_bias=True), "attention_bias=true is not supported"),
    (cfg("LlamaForCausalLM", mlp_bias=True), "mlp_bias=true is not supported"),
    (cfg("Qwen2ForCausalLM", use_sliding_window=True), "use_sliding_window=true is not supported"),
    (cfg("Qwen2ForCausalLM", hidden_act="gelu"), "hidden_act='gelu' is not supported"),
])
def test_errors_are_one_clear_line(config, message):
    with pytest.raises(ArchError) as info:
        ArchSpec.from_hf_config(config)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(ArchError, match="no HF config at .*config.json"):
        ArchSpec.from_hf_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ArchError, match="cannot read HF config"):
        ArchSpec.from_hf_config(tmp_path)


@pytest.mark.parametrize("vocab, tp, multiple, padded", [
    (300, 1, 128, 384), (300, 4, 128, 512), (512, 4, 128, 512), (128, 1, 128, 128), (129, 1, 128, 256),
    (151936, 8, 128, 152576), (151936, 1, 128, 151936), (5, 2, 1, 6),
])
def test_padded_vocab_size(vocab, tp, multiple, padded):
    assert padded_vocab_size(vocab, tp, multiple) == padded
    assert padded % (tp * multiple) == 0 and padded - vocab < tp * multiple


def test_padded_vocab_size_rejects_nonsense():
    with pytest.raises(ValueError, match="must be >= 1"):
        padded_vocab_size(100, 0)
