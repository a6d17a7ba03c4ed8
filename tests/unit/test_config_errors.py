"""Invalid configs: every problem is one ConfigError line that names the field path and values."""
from pathlib import Path

import pytest

from dcpo_mcore.config import ConfigError, load_config

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny_test.yaml"


def _error(overrides, path=TINY) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


# (overrides on top of tiny_test.yaml, substrings the message must contain). tiny_test has 2 layers,
# 4 heads, 2 query groups, 4 prompts x 4 samples, mini-batch 2 prompts, max_new_tokens 8, steps 3.
INVALID = {
    "tp_divides_heads": (["parallel.tensor_model_parallel_size=3"],
                         ["parallel.tensor_model_parallel_size: 3", "model.num_attention_heads=4",
                          "model.num_query_groups=2", "use 1, 2"]),
    "pp_divides_layers": (["parallel.pipeline_model_parallel_size=3"],
                          ["parallel.pipeline_model_parallel_size: 3", "model.num_layers=2", "use 1, 2"]),
    "vpp_needs_pp": (["parallel.virtual_pipeline_model_parallel_size=2"],
                     ["parallel.virtual_pipeline_model_parallel_size: 2", "pipeline_model_parallel_size > 1"]),
    "vpp_divides_layers": (["parallel.pipeline_model_parallel_size=2",
                            "parallel.virtual_pipeline_model_parallel_size=2"],
                           ["parallel.virtual_pipeline_model_parallel_size", "model.num_layers=2",
                            "PP*VPP = 2*2 = 4"]),
    "sp_needs_tp": (["parallel.sequence_parallel=true"],
                    ["parallel.sequence_parallel", "tensor_model_parallel_size > 1", "sequence_parallel=false"]),
    "group_size": (["rollout.n_samples_per_prompt=1"], ["rollout.n_samples_per_prompt: 1", ">= 2"]),
    "mini_batch_divides": (["algo.mini_batch_prompts=3"],
                           ["algo.mini_batch_prompts: 3", "rollout.prompts_per_step=4", "use 1, 2, 4"]),
    "dcpo_eps_low": (["algo.eps_low=0.25"], ["algo.eps_low: 0.25", "(0, 0.25)", "algo.name=dcpo"]),
    "eps_high_positive": (["algo.eps_high=0"], ["algo.eps_high", "greater than 0", "got 0"]),
    "ratio_cap": (["algo.ratio_cap=1"], ["algo.ratio_cap", "greater than 1"]),
    "temperature": (["rollout.temperature=0"], ["rollout.temperature", "greater than 0"]),
    "top_p": (["rollout.top_p=1.5"], ["rollout.top_p", "less than or equal to 1", "1.5"]),
    "top_k": (["rollout.top_k=0"], ["rollout.top_k", "-1", "got 0"]),
    "max_new_tokens": (["rollout.max_new_tokens=0"], ["rollout.max_new_tokens", "got 0"]),
    "lr": (["optim.lr=0"], ["optim.lr", "greater than 0"]),
    "min_lr": (["optim.min_lr=0.01"], ["optim.min_lr: 0.01", "optim.lr=0.0001"]),
    "warmup": (["optim.lr_warmup_steps=3"], ["optim.lr_warmup_steps: 3", "steps=3", "at most 2"]),
    "beta2": (["optim.adam_beta2=1.0"], ["optim.adam_beta2", "less than 1"]),
    "clip_grad": (["optim.clip_grad=0"], ["optim.clip_grad", "greater than 0"]),
    "keep_last": (["checkpoint.keep_last=0"], ["checkpoint.keep_last", "got 0"]),
    "fp8_dtype": (["model.fp8=e4m3"], ["model.fp8: e4m3", "params_dtype=bfloat16", "got float32"]),
    "fp8_name": (["model.fp8=e5m2"], ["model.fp8", "'e4m3'", "got 'e5m2'"]),
    "dynamic_sampling": (["algo.dynamic_sampling=true"],
                         ["algo.dynamic_sampling: not a setting of algo.name=dcpo (only of dapo)"]),
    "kl_coef": (["algo.kl_coef=-0.1"], ["algo.kl_coef", "greater than or equal to 0"]),
    "overlong_buffer": (["algo.name=dapo", "algo.overlong_buffer_len=8"],
                        ["algo.overlong_buffer_len: 8", "rollout.max_new_tokens=8"]),
    "dapo_default_buffer": (["algo.name=dapo"], ["algo.overlong_buffer_len: 512", "rollout.max_new_tokens=8"]),
    "urls_and_num_servers": (["rollout.server_urls=[http://a:1]", "rollout.num_servers=2"],
                             ["rollout.num_servers: 2", "rollout.server_urls", "set only one"]),
    "no_servers": (["rollout.num_servers=0"], ["rollout.num_servers: 0", "rollout.server_urls"]),
    "router_one_server": (["rollout.use_router=true"], ["rollout.use_router", "more than one server (got 1)"]),
    "algo_name": (["algo.name=ppo"], ["algo.name: 'ppo' is not one of dcpo, grpo, dapo, gspo"]),
    "query_groups": (["model.num_query_groups=3"], ["model.num_query_groups: 3", "model.num_attention_heads=4"]),
    "context_length": (["model.max_position_embeddings=16"],
                       ["rollout.max_new_tokens", "24 + 8 = 32", "model.max_position_embeddings=16"]),
    "missing_arch": (["model.num_layers=null"], ["model: architecture not set", "model.num_layers",
                                                 "model.hf_path"]),
    "server_tp": (["rollout.server_tp_size=3"], ["rollout.server_tp_size: 3", "model.num_attention_heads=4"]),
    "gspo_ratio_cap": (["algo.name=gspo", "algo.ratio_cap=3"],
                       ["algo.ratio_cap: not a setting of algo.name=gspo (only of dcpo, grpo_dac)", "gspo's settings"]),
    "reward_scheme": (["reward.scheme=quaternary"], ["reward.scheme", "'ternary'", "got 'quaternary'"]),
    "params_dtype": (["model.params_dtype=float16"], ["model.params_dtype", "got 'float16'"]),
    "steps": (["steps=0"], ["steps", "greater than or equal to 1"]),
    "wrong_type": (["seed=abc"], ["seed", "valid integer", "got 'abc'"]),
    "list_item": (["data.train_files=[[a]]"], ["data.train_files[0]", "valid string"]),
    "section_not_mapping": (["logging=3"], ["logging", "valid dictionary"]),
    "pause_without_staleness": (["rollout.push_mode=retract"],
                                ["rollout.push_mode: retract", "rollout.max_staleness=0"]),
    "negative_staleness": (["rollout.max_staleness=-1"], ["rollout.max_staleness", "greater than or equal to 0"]),
}


@pytest.mark.parametrize("overrides,expected", INVALID.values(), ids=INVALID.keys())
def test_invalid_config_names_field_and_values(overrides, expected):
    message = _error(overrides)
    for part in expected:
        assert part in message, f"{part!r} not in:\n{message}"
    assert "errors.pydantic.dev" not in message and "Value error" not in message


def test_every_problem_is_its_own_line():
    message = _error(["parallel.tensor_model_parallel_size=3", "rollout.n_samples_per_prompt=1",
                      "optim.min_lr=1"])
    lines = message.splitlines()
    assert len(lines) == 3
    assert [ln.split(":")[0] for ln in lines] == [
        "parallel.tensor_model_parallel_size", "rollout.n_samples_per_prompt", "optim.min_lr"]


def test_config_error_is_a_value_error_with_problem_list():
    with pytest.raises(ValueError) as info:
        load_config(TINY, ["rollout.top_k=0"])
    assert isinstance(info.value, ConfigError)
    assert info.value.problems == [str(info.value)]


def test_unknown_key_in_yaml_suggests_close_match(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY.read_text() + "\nrollouts:\n  top_k: 5\n")
    assert "rollouts: unknown key; did you mean rollout?" in _error([], cfg)
    cfg.write_text(TINY.read_text().replace("  mini_batch_prompts: 2", "  mini_batch_prompt: 2"))
    assert "algo.mini_batch_prompt: unknown key; did you mean algo.mini_batch_prompts?" in _error([], cfg)


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY.read_text().replace("reward:\n", "reward:\n  zzz: 1\n"))
    message = _error([], cfg)
    assert "reward.zzz: unknown key; valid keys in reward: verifier, scheme" in message


def test_unknown_override_key_suggests_close_match():
    message = _error(["algo.eps_lo=0.2", "rollout.n_sample_per_prompt=4"])
    assert "unknown key algo.eps_lo; did you mean algo.eps_low" in message
    assert "unknown key rollout.n_sample_per_prompt; did you mean rollout.n_samples_per_prompt?" in message
    assert len(message.splitlines()) == 2


def test_bad_override_syntax():
    assert "expected dotted.key=value" in _error(["algo.eps_low"])
    assert "seed is a value, not a section" in _error(["seed.value=1"])
    assert "value is not valid YAML" in _error(["data.train_files=[a, b"])


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("model:\n  num_layers: 2\n  hidden_size: [64\nalgo:\n  name: dcpo\n")
    message = _error([], cfg)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"{cfg}:") and "YAML syntax error" in message
    line = int(message[len(str(cfg)) + 1:].split(":")[0])
    assert 3 <= line <= 5


def test_duplicate_yaml_key_is_an_error(tmp_path):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("seed: 1\nsteps: 2\nseed: 3\n")
    message = _error([], cfg)
    assert f"{cfg}:3:1" in message and "duplicate key 'seed'" in message


def test_missing_file_is_one_line(tmp_path):
    message = _error([], tmp_path / "nope.yaml")
    assert message.count("\n") == 0
    assert "nope.yaml: cannot read config file" in message


def test_top_level_must_be_mapping(tmp_path):
    cfg = tmp_path / "list.yaml"
    cfg.write_text("- a\n- b\n")
    assert "top level must be a mapping" in _error([], cfg)


def test_defaults_alone_need_an_architecture(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    for path in (None, empty):
        assert _error([], path).startswith("model: architecture not set")


@pytest.mark.parametrize("overrides,cap", [([], None), (["rollout.max_staleness=1"], 2.0),
                                            (["rollout.max_staleness=2", "algo.tis_cap=null"], None),
                                            (["rollout.max_staleness=1", "algo.tis_cap=5"], 5.0),
                                            (["algo.tis_cap=3"], 3.0)])
def test_the_importance_weight_cap_defaults_on_only_off_policy(overrides, cap):
    assert load_config(TINY, overrides).algo.tis_cap == cap
