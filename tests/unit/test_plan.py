"""The memory planner (dcpo_mcore/launch/plan.py, tools/plan.py).

* parameter counts equal megatron-core's real GPTModel, per rank, for the tiny configs and several
  architecture flavours (one 2-rank gloo launch builds every model);
* the production recipes' HF counts match the published Qwen2.5 sizes;
* the memory arithmetic follows its documented formulas on hand-computable cases;
* impossible layouts exit 2 with one line; the shipped recipes plan OK.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dcpo_mcore.config import load_config
from dcpo_mcore.engine.hf_arch import ArchSpec
from dcpo_mcore.launch.plan import (GIB, arch_from_config, make_plan, stage_params, total_params,
                                    trainer_memory)
from dcpo_mcore.launch.settings import LaunchSettings

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ["qwen2.5-math-7b_dcpo", "qwen2.5-14b_dcpo", "qwen2.5-32b_dcpo", "qwen2.5-72b_dcpo"]
# Published sizes (Hugging Face model cards, "Number of Parameters"): 7.61B, 14.7B, 32.5B, 72.7B.
PUBLISHED_B = {"qwen2.5-math-7b_dcpo": 7.61, "qwen2.5-14b_dcpo": 14.7, "qwen2.5-32b_dcpo": 32.5,
               "qwen2.5-72b_dcpo": 72.7}


def _arch(**kw) -> ArchSpec:
    base = dict(family="qwen2", num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                num_query_groups=2, head_dim=16, vocab_size=64, max_position_embeddings=64, rms_norm_eps=1e-6,
                rope_theta=1e6, rope_scaling=None, tie_word_embeddings=False, qkv_bias=True, qk_norm=False,
                torch_dtype=None)
    base.update(kw)
    return ArchSpec(**base)


def _tiny_archs() -> dict[str, dict]:
    tiny = arch_from_config(load_config(ROOT / "configs/tiny_test.yaml")).__dict__
    demo = arch_from_config(load_config(ROOT / "configs/demo_cpu.yaml")).__dict__
    return {
        "tiny_test": tiny,
        "demo_cpu": demo,
        "tiny_tied": {**tiny, "tie_word_embeddings": True},
        "qwen3_qknorm": {**tiny, "family": "qwen3", "qkv_bias": False, "qk_norm": True, "head_dim": 32},
        "llama_odd_vocab": {**tiny, "family": "llama", "qkv_bias": False, "vocab_size": 301, "num_layers": 4},
    }


LAYOUTS = [(1, 1), (2, 1), (1, 2)]  # (TP, PP) on a 2-rank world


def count_megatron_params(archs: dict[str, dict], layouts: list[tuple[int, int]]) -> list[dict]:
    """Rank-side (tests/dist/launcher.py): build the real megatron GPTModel per arch and layout, count."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from dcpo_mcore.engine.layout import ParallelLayout, Precision
    from dcpo_mcore.engine.model_builder import build_model_chunks, build_transformer_config, select_layer_spec
    from dcpo_mcore.engine.parallel import init_model_parallel

    out = []
    for tp, pp in layouts:
        layout = ParallelLayout(tp=tp, pp=pp)
        init_model_parallel(layout, seed=0)
        for name, fields in archs.items():
            arch = ArchSpec(**fields)
            if arch.num_layers % pp:  # demo_cpu's 3 layers: no PP2
                continue
            config = build_transformer_config(arch, layout, Precision(), on_gpu=False)
            spec, _ = select_layer_spec(arch, want_te=False)
            chunks = build_model_chunks(arch, config, spec)
            n = sum(p.numel() for c in chunks for p in c.parameters())
            out.append({"name": name, "tp": tp, "pp": pp, "stage": ps.get_pipeline_model_parallel_rank(),
                        "rank": dist.get_rank(), "params": n})
    return out


@pytest.mark.dist
@pytest.mark.timeout(300)
def test_param_counts_equal_real_megatron_model():
    from tests.dist.launcher import launch

    archs = _tiny_archs()
    results = launch("tests.unit.test_plan:count_megatron_params", world_size=2, args=(archs, LAYOUTS),
                     timeout_s=240)
    checked = 0
    for per_rank in results:
        for r in per_rank:
            arch = ArchSpec(**archs[r["name"]])
            assert stage_params(arch, r["tp"], r["pp"], r["stage"]) == r["params"], r
            checked += 1
    expected = sum(2 for a in archs.values() for _, pp in LAYOUTS if a["num_layers"] % pp == 0)
    assert checked == expected and checked >= 2 * len(archs) * 2
    # PP1/TP1 on rank 0 is the whole model: megatron's total is the padded-vocab total
    whole = {r["name"]: r["params"] for r in results[0] if (r["tp"], r["pp"]) == (1, 1)}
    for name, fields in archs.items():
        assert whole[name] == total_params(ArchSpec(**fields), padded_to_tp=1)


def test_tiny_config_counts_by_hand():
    # tiny_test: h=64, F=128, 4 heads of 16, 2 kv groups, vocab 64 (padded to 128), 2 layers, qkv bias
    a = arch_from_config(load_config(ROOT / "configs/tiny_test.yaml"))
    qkv = 64 + 2 * 32
    layer = 2 * 64 + 64 * qkv + qkv + 64 * 64 + 64 * 256 + 128 * 64
    assert stage_params(a, 1, 1, 0) == 2 * layer + 2 * 128 * 64 + 64
    assert total_params(a) == 2 * layer + 2 * 64 * 64 + 64  # HF: unpadded vocab
    # TP2 halves the GEMMs and the (256-padded) vocab, keeps the norms
    assert stage_params(a, 2, 1, 0) == 2 * (2 * 64 + (64 * qkv + qkv + 64 * 64 + 64 * 256 + 128 * 64) // 2) \
        + 2 * 256 * 64 // 2 + 64


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_match_published_sizes_and_fit(recipe):
    path = ROOT / "configs" / f"{recipe}.yaml"
    cfg = load_config(path)
    assert cfg.model.fp8 is not None and cfg.model.params_dtype == "bfloat16"
    r = cfg.rollout
    assert (r.prompts_per_step, r.n_samples_per_prompt, cfg.algo.mini_batch_prompts) == (512, 16, 32)
    assert (r.max_prompt_tokens, r.max_new_tokens, cfg.optim.lr) == (1024, 3072, 1e-6)
    arch = arch_from_config(cfg)
    assert abs(total_params(arch) / 1e9 - PUBLISHED_B[recipe]) / PUBLISHED_B[recipe] < 0.01
    launch = cfg.launch
    assert launch is not None, f"configs/{recipe}.yaml has no launch section"
    plan = make_plan(cfg, launch)
    assert plan.problems == [], plan.problems
    assert plan.world == launch.train_nodes * launch.gpus_per_node
    assert plan.worst.total + launch.overhead_gib * GIB < launch.gpu_memory_gib * GIB
    assert plan.rollout is not None and plan.rollout.num_servers == cfg.rollout.num_servers
    assert plan.rollout.seqs_at_once >= 64


def test_memory_components_follow_the_formulas():
    cfg = load_config(ROOT / "configs/tiny_test.yaml", ["model.params_dtype=bfloat16",
                                                        "parallel.use_distributed_optimizer=true"])
    a = _arch(vocab_size=1000)
    n = stage_params(a, 1, 1, 0)
    mem = trainer_memory(a, cfg, dp=4, stage=0, micro_batches=1)
    assert mem.bytes["weights"] == 2 * n and mem.bytes["grads"] == 4 * n
    assert mem.bytes["optimizer"] == 12 * n / 4  # master + m + v, sharded over DP 4
    assert mem.bytes["fp8 weight copies"] == 0
    tokens = 2 * (24 + 8)
    per_layer = 4 * 64 + (2 * 64 + 2 * 32 + 3 * 128)
    assert mem.bytes["activations"] == tokens * 2 * per_layer * 2
    # full recompute keeps one h per layer plus one layer's working set
    full = load_config(ROOT / "configs/tiny_test.yaml", ["model.params_dtype=bfloat16", "parallel.recompute=full"])
    m2 = trainer_memory(a, full, dp=1, stage=0, micro_batches=1)
    assert m2.bytes["activations"] == tokens * 2 * 64 * 2 + tokens * per_layer * 2
    assert m2.bytes["optimizer"] == 12 * n  # no distributed optimizer


def _run_plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools/plan.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_cli_ok_and_impossible_layouts_exit_2_with_one_line(tmp_path):
    ok = _run_plan("configs/tiny_test.yaml")
    assert ok.returncode == 0, ok.stderr
    assert "OK: the layout fits" in ok.stdout and "weights" in ok.stdout
    cases = {
        ("parallel.tensor_model_parallel_size=3",): "must divide model.num_attention_heads",
        ("parallel.pipeline_model_parallel_size=3",): "must divide model.num_layers",
        ("model.num_layers=80", "model.hidden_size=8192", "model.ffn_hidden_size=29568",
         "model.num_attention_heads=64", "model.num_query_groups=8", "model.vocab_size=152064",
         "model.max_position_embeddings=4096", "model.params_dtype=bfloat16"): "out of memory",
    }
    for overrides, needle in cases.items():
        res = _run_plan("configs/tiny_test.yaml", *overrides)
        assert res.returncode == 2, (overrides, res.stdout, res.stderr)
        err = res.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("plan: error:") and needle in err[0], err
    # a world the layout does not divide (the config's launch section), also one line
    res = _run_plan("configs/tiny_test.yaml", "parallel.tensor_model_parallel_size=2", "launch.train_nodes=1",
                    "launch.gpus_per_node=3")
    assert res.returncode == 2 and "not divisible by TP*PP" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = _run_plan("configs/tiny_test.yaml", "launch.train_nodez=1")
    assert res.returncode == 2 and "launch.train_nodez" in res.stderr and "did you mean launch.train_nodes" in res.stderr


def test_recipe_cli_prints_kv_budget():
    res = _run_plan("configs/qwen2.5-72b_dcpo.yaml")
    assert res.returncode == 0, res.stderr
    assert "KV pool" in res.stdout and "TP8 x PP4" in res.stdout


def test_launch_defaults():
    s = LaunchSettings()
    assert s.colocated and s.gpus_per_node == 8
