"""Loading: overrides, HF config.json, resolved-config round trip, launch-time checks."""
import json
import shutil
from pathlib import Path

import pytest
import yaml

from dcpo_mcore.config import (ConfigError, apply_overrides, check_paths, check_world_size, config_to_dict,
                               load_config, save_resolved_config)

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_test.yaml"


# ---------------------------------------------------------------- overrides
def test_override_value_types():
    cfg = load_config(TINY, [
        "seed=7", "optim.lr=2e-5", "algo.eps_low=0.1", "parallel.sequence_parallel=false",
        "rollout.server_urls=[http://a:1,http://b:2]", "rollout.num_servers=0", "rollout.use_router=true",
        "parallel.virtual_pipeline_model_parallel_size=null", "model.fp8=null", "run_dir=runs/x"])
    assert cfg.seed == 7 and isinstance(cfg.seed, int)
    assert cfg.optim.lr == 2e-5  # PyYAML reads '2e-5' as a string; pydantic parses it as a float
    assert cfg.algo.eps_low == 0.1
    assert cfg.parallel.sequence_parallel is False
    assert cfg.rollout.server_urls == ["http://a:1", "http://b:2"]
    assert cfg.parallel.virtual_pipeline_model_parallel_size is None
    assert cfg.run_dir == "runs/x"


def test_override_string_and_list_coercions():
    cfg = load_config(TINY, ["data.train_files=a.parquet", "data.eval_files=[x.jsonl, y.parquet]",
                             "rollout.sglang_extra_args=[--mem-fraction-static, 0.8, --tp, 2]",
                             "checkpoint.resume=/ckpt/lr=1e-6/step_10", "rollout.server_urls=[http://h:1/v1]",
                             "rollout.num_servers=0"])
    assert cfg.data.train_files == ["a.parquet"]
    assert cfg.data.eval_files == ["x.jsonl", "y.parquet"]
    assert cfg.rollout.sglang_extra_args == ["--mem-fraction-static", "0.8", "--tp", "2"]
    assert cfg.checkpoint.resume == "/ckpt/lr=1e-6/step_10"  # only the first '=' splits key from value
    assert cfg.rollout.server_urls == ["http://h:1/v1"]


def test_override_nested_section_and_order():
    cfg = load_config(TINY, ["algo={name: grpo, mini_batch_prompts: 4}", "algo.kl_coef=0.01"])
    assert (cfg.algo.name, cfg.algo.mini_batch_prompts, cfg.algo.kl_coef) == ("grpo", 4, 0.01)
    assert cfg.algo.eps_high == 0.2  # grpo default, not dcpo's
    assert load_config(TINY, ["seed=1", "seed=2"]).seed == 2
    assert load_config(TINY, "seed=5").seed == 5  # a lone string is one override


def test_overrides_on_defaults_and_without_mutating_input():
    data = {"model": {"num_layers": 2}}
    out = apply_overrides(data, ["model.hidden_size=8", "optim.lr=0.1"])
    assert out == {"model": {"num_layers": 2, "hidden_size": 8}, "optim": {"lr": 0.1}}
    assert data == {"model": {"num_layers": 2}}
    cfg = load_config(None, ["model.num_layers=2", "model.hidden_size=32", "model.num_attention_heads=2",
                             "model.vocab_size=16", "model.max_position_embeddings=4096"])
    assert cfg.run_dir == "runs/dcpo" and cfg.rollout.n_samples_per_prompt == 16


# ---------------------------------------------------------------- HF config.json
def _hf_dir(tmp_path, **drop):
    hf = {"architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 4, "hidden_size": 96,
          "intermediate_size": 256, "num_attention_heads": 6, "num_key_value_heads": 2,
          "vocab_size": 151936, "max_position_embeddings": 4096, "rope_theta": 1e6}
    for key in drop:
        hf.pop(key)
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(hf))
    return d


def _tiny_without_arch(tmp_path, hf: Path) -> Path:
    data = yaml.safe_load(TINY.read_text())
    data["model"] = {"hf_path": str(hf), "params_dtype": "float32"}
    path = tmp_path / "hf.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_architecture_read_from_hf_config(tmp_path):
    path = _tiny_without_arch(tmp_path, _hf_dir(tmp_path))
    m = load_config(path).model
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size) == (4, 96, 256)
    assert (m.num_attention_heads, m.num_query_groups) == (6, 2)
    assert (m.vocab_size, m.max_position_embeddings) == (151936, 4096)
    # config.json defines the architecture: a YAML value may repeat it, and one that disagrees is refused
    assert load_config(path, ["model.num_layers=4", "model.vocab_size=151936"]).model.num_layers == 4
    with pytest.raises(ConfigError) as info:
        load_config(path, ["model.num_layers=2", "model.hidden_size=64"])
    assert info.value.problems == [
        f"model.num_layers: 2 disagrees with num_hidden_layers=4 in {path.parent / 'hf'}/config.json, which "
        "defines the architecture; remove model.num_layers",
        f"model.hidden_size: 64 disagrees with hidden_size=96 in {path.parent / 'hf'}/config.json, which "
        "defines the architecture; remove model.hidden_size"]
    # the architecture read from the file is validated against the layout
    with pytest.raises(ConfigError, match="model.num_attention_heads=6 and model.num_query_groups=2; use 1, 2"):
        load_config(path, ["parallel.tensor_model_parallel_size=4"])


def test_missing_kv_heads_means_one_group_per_head(tmp_path):
    path = _tiny_without_arch(tmp_path, _hf_dir(tmp_path, num_key_value_heads=None))
    assert load_config(path).model.num_query_groups == 6


def test_missing_or_bad_hf_config(tmp_path):
    empty = tmp_path / "empty_ckpt"
    empty.mkdir()
    with pytest.raises(ConfigError) as info:
        load_config(_tiny_without_arch(tmp_path, empty))
    assert str(info.value).startswith(f"model.hf_path='{empty}': no config.json")
    assert len(info.value.problems) == 1
    hf = _hf_dir(tmp_path)
    good = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**good, "num_hidden_layers": "four"}))
    with pytest.raises(ConfigError, match="model.hf_path=.*num_hidden_layers='four', expected a positive integer"):
        load_config(_tiny_without_arch(tmp_path, hf))
    (hf / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 2}))
    with pytest.raises(ConfigError, match=r"model.hf_path=.*HF config is missing 'hidden_size'"):
        load_config(_tiny_without_arch(tmp_path, hf))
    (hf / "config.json").write_text(json.dumps({**good, "architectures": ["MistralForCausalLM"]}))
    with pytest.raises(ConfigError, match=r"model.hf_path=.*unsupported architecture MistralForCausalLM"):
        load_config(_tiny_without_arch(tmp_path, hf))


# ---------------------------------------------------------------- resolved config
@pytest.mark.parametrize("name", ["dcpo", "grpo", "dapo", "gspo", "grpo_sas", "grpo_dac", "dppo"])
def test_save_resolved_config_round_trips(tmp_path, name):
    extra = ["algo.overlong_buffer_len=4"] if name == "dapo" else []
    cfg = load_config(TINY, [f"algo.name={name}", "rollout.max_new_tokens=16", *extra,
                             "rollout.sglang_extra_args=[--x, 1]", "optim.lr=3e-7"])
    path = save_resolved_config(cfg, tmp_path / "run")
    assert path == tmp_path / "run" / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    low = "delta_low" if name == "dppo" else "eps_low"
    assert saved["algo"][low] == getattr(cfg.algo, low)  # algorithm defaults are written out
    assert saved["checkpoint"]["dir"] == cfg.checkpoint.dir
    assert load_config(path) == cfg
    assert config_to_dict(load_config(path)) == config_to_dict(cfg)
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temp file left behind


def test_resolved_config_does_not_need_hf_dir_again(tmp_path):
    hf = _hf_dir(tmp_path)
    cfg = load_config(_tiny_without_arch(tmp_path, hf))
    path = save_resolved_config(cfg, tmp_path / "run")
    shutil.rmtree(hf)
    assert load_config(path) == cfg


def test_config_to_dict_is_plain_data():
    d = config_to_dict(load_config(TINY))
    assert d["algo"]["name"] == "dcpo" and d["model"]["num_layers"] == 2
    assert yaml.safe_load(yaml.safe_dump(d)) == d


# ---------------------------------------------------------------- launch-time checks
@pytest.mark.parametrize("overrides,world,dp", [
    ([], 1, 1),
    ([], 8, 8),  # 2 prompts x 4 samples = 8 responses per optimizer step, mbs 1 per rank
    (["parallel.micro_batch_size=1", "parallel.tensor_model_parallel_size=2"], 4, 2),
    (["parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=2"], 8, 2),
])
def test_check_world_size_good(overrides, world, dp):
    cfg = load_config(TINY, ["parallel.micro_batch_size=1"] + overrides)
    assert check_world_size(cfg, world) == dp


def test_check_world_size_not_divisible_by_model_parallel():
    cfg = load_config(TINY, ["parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=2"])
    with pytest.raises(ConfigError) as info:
        check_world_size(cfg, 6)
    assert "world_size=6 is not divisible by TP*PP = 2*2 = 4" in str(info.value)
    assert "multiple of 4" in str(info.value)


def test_check_world_size_micro_batch_fix():
    cfg = load_config(TINY, ["parallel.micro_batch_size=8"])  # 8 responses per optimizer step
    with pytest.raises(ConfigError) as info:
        check_world_size(cfg, 2)
    msg = str(info.value)
    assert msg.startswith("parallel.micro_batch_size:")
    assert "2*4 = 8 responses" in msg and "DP*micro_batch_size = 2*8 = 16" in msg
    assert "use parallel.micro_batch_size in 1, 2, 4" in msg


def test_check_world_size_dp_fix():
    cfg = load_config(TINY, ["parallel.micro_batch_size=1"])
    with pytest.raises(ConfigError, match=r"DP in 1, 2, 4, 8 \(world = DP\*1\)"):
        check_world_size(cfg, 3)


def test_check_paths(tmp_path):
    cfg = load_config(TINY)
    with pytest.raises(ConfigError, match="data.train_files: empty"):
        check_paths(cfg)
    train = tmp_path / "train.jsonl"
    train.write_text("{}\n")
    with pytest.raises(ConfigError) as info:
        check_paths(load_config(TINY, [f"data.train_files=[{train}]", "data.eval_files=[nope.parquet]",
                                       "model.init_checkpoint=/no/such/dir", "checkpoint.resume=/no/ckpt"]))
    assert [ln.split(":")[0] for ln in info.value.problems] == [
        "data.eval_files[0]", "model.init_checkpoint", "checkpoint.resume"]
    check_paths(load_config(TINY, [f"data.train_files=[{train}]", "checkpoint.resume=never"]))
