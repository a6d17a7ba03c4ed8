"""The config tree itself: descriptions, strictness, defaults, per-algorithm defaults, shipped configs."""
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from dcpo_mcore.algo import ALGORITHMS
from dcpo_mcore.config import (METHOD_SETTINGS, ConfigError, TrainConfig, algo_config, load_config,
                               validate_config)

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_test.yaml"


def _walk(model: type[BaseModel], prefix: str = ""):
    """Yield (dotted path, FieldInfo, model class) for every field of every section, recursively."""
    for name, field in model.model_fields.items():
        yield prefix + name, field, model
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _walk(field.annotation, prefix + name + ".")
        for member in typing.get_args(field.annotation):  # a tagged section: every member's fields
            if isinstance(member, type) and issubclass(member, BaseModel):
                yield from _walk(member, prefix + name + ".")


def test_every_field_has_a_description():
    fields = list(_walk(TrainConfig))
    assert len(fields) > 80  # the walk really descends into the sections
    missing = [path for path, field, _ in fields if not (field.description or "").strip()]
    assert missing == []


def test_every_section_forbids_unknown_keys():
    sections = {TrainConfig} | {owner for _, _, owner in _walk(TrainConfig)}
    # the root, its 10 section classes and, for the `algo` union, one settings class per method
    # (4 methods, 2 ablations, dppo)
    assert len(sections) == 18
    assert all(s.model_config.get("extra") == "forbid" for s in sections)


def test_sections_and_their_fields():
    assert list(TrainConfig.model_fields) == [
        "run_dir", "seed", "steps", "eval_interval", "eval_k", "model", "parallel", "rollout", "reward", "algo",
        "optim", "data", "checkpoint", "logging", "sync", "launch"]
    paths = {p for p, _, _ in _walk(TrainConfig)}
    for p in ["model.hf_path", "model.init_checkpoint", "model.fp8_recipe", "parallel.recompute",
              "rollout.sglang_extra_args", "reward.scheme", "algo.sas_std", "algo.dynamic_sampling",
              "optim.clip_grad", "data.prompt_key", "checkpoint.keep_last", "logging.log_interval"]:
        assert p in paths


def test_paper_defaults():
    cfg = load_config(TINY)
    base = TrainConfig.model_fields
    assert base["steps"].default == 400
    r, o = type(cfg.rollout).model_fields, type(cfg.optim).model_fields
    assert (r["prompts_per_step"].default, r["n_samples_per_prompt"].default) == (512, 16)
    assert (r["max_prompt_tokens"].default, r["max_new_tokens"].default, r["top_k"].default) == (1024, 3072, -1)
    assert (o["lr"].default, o["weight_decay"].default, o["clip_grad"].default) == (1e-6, 0.1, 1.0)
    assert all(m.model_fields["mini_batch_prompts"].default == 32 for m in METHOD_SETTINGS.values())
    assert cfg.reward.scheme == "ternary" and cfg.algo.kl_type == "low_var_kl"
    assert cfg.model.attention_dropout == cfg.model.hidden_dropout == 0.0


EXPECTED_ALGO = {
    "dcpo": dict(eps_low=0.16, eps_high=0.2, ratio_cap=10.0, sas_std="unbiased", aggregation="otm", kl_coef=0.0),
    "grpo": dict(eps_low=0.2, eps_high=0.2, dual_clip_c=None, aggregation="seq_mean_token_mean", kl_coef=0.001),
    "dapo": dict(eps_low=0.2, eps_high=0.28, dual_clip_c=10.0, aggregation="token_mean", kl_coef=0.0,
                 dynamic_sampling=True, max_gen_batches=10, overlong_buffer_len=512, overlong_penalty=1.0),
    "gspo": dict(eps_low=3e-4, eps_high=4e-4, aggregation="seq_mean_token_mean", kl_coef=0.0),
    # The section 5.4 ablations: GRPO without KL, plus DCPO's SAS or its DAC (with DCPO's parameters).
    "grpo_sas": dict(eps_low=0.2, eps_high=0.2, dual_clip_c=None, sas_std="unbiased",
                     aggregation="seq_mean_token_mean", kl_coef=0.0),
    "grpo_dac": dict(eps_low=0.16, eps_high=0.2, ratio_cap=10.0, aggregation="seq_mean_token_mean", kl_coef=0.0),
    "dppo": dict(delta_low=0.15, delta_high=0.15, aggregation="seq_mean_token_mean", kl_coef=0.0),
}
COMMON = {"name", "kl_coef", "kl_type", "ppo_epochs", "mini_batch_prompts", "entropy_coef", "tis_cap"}


@pytest.mark.parametrize("name", sorted(EXPECTED_ALGO))
def test_algorithm_defaults_and_nothing_else(name):
    assert set(METHOD_SETTINGS) == set(EXPECTED_ALGO) == set(ALGORITHMS.names())
    algo = algo_config(name=name)
    for key, value in EXPECTED_ALGO[name].items():
        assert getattr(algo, key) == value, key
    # Each method has exactly its own settings: anything else would be accepted and ignored.
    assert set(type(algo).model_fields) == COMMON | set(EXPECTED_ALGO[name])
    assert algo.aggregation == ALGORITHMS.get(name).aggregation  # the composition table is the one source


def test_algo_section_without_name_is_dcpo():
    data = yaml.safe_load(TINY.read_text())
    data["algo"] = {"eps_high": 0.3, "mini_batch_prompts": 2}
    assert validate_config(data).algo == algo_config(name="dcpo", eps_high=0.3, mini_batch_prompts=2)
    assert TrainConfig.model_fields["algo"].default_factory() == algo_config()


def test_algorithm_name_switch_by_override_uses_new_defaults():
    cfg = load_config(TINY, ["algo.name=dapo", "rollout.max_new_tokens=16", "algo.overlong_buffer_len=4"])
    assert (cfg.algo.eps_low, cfg.algo.eps_high, cfg.algo.dynamic_sampling) == (0.2, 0.28, True)
    assert cfg.algo.overlong_buffer_len == 4
    assert cfg.algo.rollout_shaping() == dict(dynamic_sampling=True, max_gen_batches=10, overlong_buffer_len=4,
                                              overlong_penalty=1.0)
    assert load_config(TINY, ["algo.name=grpo"]).algo.rollout_shaping() == {}


def test_user_value_beats_algorithm_default():
    assert algo_config(name="dapo", eps_high=0.3).eps_high == 0.3
    assert algo_config(name="dapo", dual_clip_c=None).dual_clip_c is None  # explicit null = off
    assert algo_config(name="grpo", kl_coef=0.0).kl_coef == 0.0
    assert algo_config(name="grpo", aggregation="otm").aggregation == "otm"
    gspo = algo_config(name="gspo", eps_low=1e-3, eps_high=2e-3)
    assert (gspo.eps_low, gspo.eps_high) == (1e-3, 2e-3)


@pytest.mark.parametrize("overrides,needles", [
    (["algo.name=dcpo", "algo.dual_clip_c=3.0"], ["algo.dual_clip_c: not a setting of algo.name=dcpo", "ratio_cap"]),
    (["algo.name=grpo", "algo.ratio_cap=3.0"],
     ["algo.ratio_cap: not a setting of algo.name=grpo (only of dcpo, grpo_dac)"]),
    (["algo.name=grpo", "algo.sas_std=population"], ["algo.sas_std: not a setting of algo.name=grpo"]),
    (["algo.name=gspo", "algo.dual_clip_c=3"], ["algo.dual_clip_c: not a setting of algo.name=gspo (only of grpo, dapo, grpo_sas)"]),
    (["algo.name=dppo", "algo.eps_high=0.2"], ["algo.eps_high: not a setting of algo.name=dppo", "algo.delta_high"]),
    (["algo.name=grpo_dac", "algo.dual_clip_c=3"], ["algo.dual_clip_c: not a setting of algo.name=grpo_dac", "ratio_cap"]),
    (["algo.name=dcpo", "algo.overlong_penalty=1"], ["algo.overlong_penalty: not a setting of algo.name=dcpo (only of dapo)"]),
])
def test_a_setting_the_method_does_not_use_is_refused(overrides, needles):
    with pytest.raises(ConfigError) as info:
        load_config(TINY, overrides)
    assert len(info.value.problems) == 1
    for needle in needles:
        assert needle in info.value.problems[0]


def test_legacy_gspo_eps_keys_are_refused_with_the_replacement(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(TINY.read_text() + "\n")
    data = yaml.safe_load(path.read_text())
    data["algo"] = {"name": "gspo", "gspo_eps_low": 1e-3}
    with pytest.raises(ConfigError, match=r"algo.gspo_eps_low: not a setting of algo.name=gspo: .*algo.eps_low"):
        validate_config(data)


def test_explicit_null_for_a_required_algorithm_value_is_an_error():
    with pytest.raises(ConfigError, match="algo.eps_low: Input should be a valid number"):
        load_config(TINY, ["algo.eps_low=null"])


def test_checkpoint_dir_defaults_inside_run_dir():
    cfg = load_config(TINY, ["run_dir=/tmp/somewhere/"])
    assert cfg.checkpoint.dir == "/tmp/somewhere/checkpoints"
    assert load_config(TINY, ["checkpoint.dir=/ckpt"]).checkpoint.dir == "/ckpt"


def test_num_servers_default_follows_server_urls():
    attached = load_config(TINY, ["rollout.server_urls=[http://a:1,http://b:2]", "rollout.num_servers=0"])
    assert attached.rollout.server_urls == ["http://a:1", "http://b:2"]
    data = load_config(TINY).model_dump()
    del data["rollout"]["num_servers"]
    assert validate_config(data).rollout.num_servers == 1
    data["rollout"]["server_urls"] = ["http://a:1", "http://b:2"]
    data["rollout"]["use_router"] = True
    assert validate_config(data).rollout.num_servers == 0


def test_architecture_fallbacks():
    data = load_config(TINY).model_dump()
    data["model"]["ffn_hidden_size"] = None
    data["model"]["num_query_groups"] = None
    m = validate_config(data).model
    assert (m.ffn_hidden_size, m.num_query_groups) == (4 * 64, 4)


@pytest.mark.parametrize("name", ["demo_cpu.yaml", "tiny_test.yaml"])
def test_shipped_configs_load(name):
    text = (ROOT / "configs" / name).read_text()
    assert text.startswith("#")  # documented header
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.algo.name == "dcpo" and cfg.reward.scheme == "ternary"
    assert cfg.parallel.tensor_model_parallel_size == cfg.parallel.pipeline_model_parallel_size == 1


def test_demo_matches_calibration():
    cfg = load_config(ROOT / "configs" / "demo_cpu.yaml")
    m = cfg.model
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.num_query_groups) == (3, 128, 4, 2)
    assert (cfg.rollout.prompts_per_step, cfg.rollout.n_samples_per_prompt) == (32, 8)
    assert cfg.rollout.prompts_per_step // cfg.algo.mini_batch_prompts == 2
    assert cfg.optim.lr == 2e-4 and cfg.run_dir == "runs/demo_cpu"
    assert (cfg.algo.eps_low, cfg.algo.eps_high, cfg.algo.ratio_cap) == (0.16, 0.2, 10.0)
    tiny = load_config(TINY).model
    assert (tiny.num_layers, tiny.hidden_size) == (2, 64)
