"""HF <-> megatron weight mapping: hand-built layouts, byte-exact round trips over TP x PP x naming,
errors, and a check against real megatron-core GPTModels (names, shapes, strict load, logits)."""
import importlib.util
import itertools
import json

import pytest
import torch

from dcpo_mcore.engine.hf_arch import ArchSpec, padded_vocab_size
from dcpo_mcore.engine.hf_mapping import (
    MappingError, check_hf_names, expected_hf_names, expected_hf_shapes, expected_mcore_shapes,
    hf_to_mcore_shard, iter_mcore_to_hf, layer_range, mcore_params,
)


def make_arch(family="qwen2", tied=False, heads=8, groups=4, head_dim=8, hidden=32, ffn=48, vocab=300,
              layers=4, rope_scaling=None) -> ArchSpec:
    return ArchSpec(family=family, num_layers=layers, hidden_size=hidden, ffn_hidden_size=ffn,
                    num_attention_heads=heads, num_query_groups=groups, head_dim=head_dim, vocab_size=vocab,
                    max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=1e4, rope_scaling=rope_scaling,
                    tie_word_embeddings=tied, qkv_bias=family == "qwen2", qk_norm=family == "qwen3",
                    torch_dtype="float32")


def random_hf(arch: ArchSpec, dtype=torch.float32, seed=0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=gen).to(dtype) for n, s in expected_hf_shapes(arch).items()}


def convert_all(hf, arch, tp, pp, te=False) -> dict[tuple[int, int], dict[str, torch.Tensor]]:
    return {(r, p): hf_to_mcore_shard(hf.__getitem__, arch, r, tp, p, pp, te_names=te, hf_names=hf)
            for r in range(tp) for p in range(pp)}


def export(shards, arch, tp, pp, te=False, **kw) -> list[tuple[str, torch.Tensor]]:
    return list(iter_mcore_to_hf(lambda p, name: [shards[(r, p)][name] for r in range(tp)],
                                 arch, tp, pp, te_names=te, **kw))


# --- hand-built layouts -------------------------------------------------------------------------


def rows(*values, width=3):
    return torch.tensor([[float(v)] * width for v in values])


def test_qkv_fused_per_query_group_by_hand():
    # 4 query heads in 2 groups, head_dim 2: q heads 0,1 (rows 100-103) go with k/v head 0, and
    # q heads 2,3 (rows 104-107) with k/v head 1.
    arch = make_arch("qwen2", heads=4, groups=2, head_dim=2, hidden=3, ffn=4, vocab=5, layers=1)
    hf = random_hf(arch)
    p = "model.layers.0.self_attn."
    hf[p + "q_proj.weight"], hf[p + "k_proj.weight"], hf[p + "v_proj.weight"] = (
        rows(*range(100, 108)), rows(*range(200, 204)), rows(*range(300, 304)))
    hf[p + "q_proj.bias"], hf[p + "k_proj.bias"], hf[p + "v_proj.bias"] = (
        torch.arange(100.0, 108), torch.arange(200.0, 204), torch.arange(300.0, 304))
    expected = [100, 101, 102, 103, 200, 201, 300, 301,  # group 0: q0 q1 | k0 | v0
                104, 105, 106, 107, 202, 203, 302, 303]  # group 1: q2 q3 | k1 | v1
    tp1 = hf_to_mcore_shard(hf.__getitem__, arch)
    assert tp1["decoder.layers.0.self_attention.linear_qkv.weight"][:, 0].tolist() == expected
    assert tp1["decoder.layers.0.self_attention.linear_qkv.bias"].tolist() == expected
    for r in range(2):  # each TP2 rank holds one whole group
        shard = hf_to_mcore_shard(hf.__getitem__, arch, tp_rank=r, tp_size=2)
        assert shard["decoder.layers.0.self_attention.linear_qkv.weight"][:, 0].tolist() == expected[8 * r:8 * r + 8]
        assert shard["decoder.layers.0.self_attention.linear_qkv.bias"].tolist() == expected[8 * r:8 * r + 8]
    # TP4 > 2 groups (megatron allows it): each rank holds the contiguous quarter of the fused rows.
    for r in range(4):
        shard = hf_to_mcore_shard(hf.__getitem__, arch, tp_rank=r, tp_size=4)
        assert shard["decoder.layers.0.self_attention.linear_qkv.weight"][:, 0].tolist() == expected[4 * r:4 * r + 4]


def test_gate_up_and_row_parallel_by_hand():
    arch = make_arch("llama", heads=4, groups=2, head_dim=2, hidden=3, ffn=4, vocab=5, layers=1)
    hf = random_hf(arch)
    hf["model.layers.0.mlp.gate_proj.weight"] = rows(10, 11, 12, 13)
    hf["model.layers.0.mlp.up_proj.weight"] = rows(20, 21, 22, 23)
    hf["model.layers.0.mlp.down_proj.weight"] = torch.arange(12.0).reshape(3, 4)
    assert hf_to_mcore_shard(hf.__getitem__, arch)["decoder.layers.0.mlp.linear_fc1.weight"][:, 0].tolist() == [
        10, 11, 12, 13, 20, 21, 22, 23]
    r0, r1 = (hf_to_mcore_shard(hf.__getitem__, arch, tp_rank=r, tp_size=2) for r in range(2))
    assert r0["decoder.layers.0.mlp.linear_fc1.weight"][:, 0].tolist() == [10, 11, 20, 21]
    assert r1["decoder.layers.0.mlp.linear_fc1.weight"][:, 0].tolist() == [12, 13, 22, 23]
    assert r1["decoder.layers.0.mlp.linear_fc2.weight"].tolist() == [[2, 3], [6, 7], [10, 11]]
    assert torch.equal(r0["decoder.layers.0.input_layernorm.weight"], r1["decoder.layers.0.input_layernorm.weight"])


def test_vocab_padding_is_zero_and_cut_on_export():
    arch = make_arch("llama", heads=4, groups=2, head_dim=2, hidden=3, ffn=4, vocab=5, layers=1)
    hf = random_hf(arch)
    shards = convert_all(hf, arch, tp=2, pp=1)
    emb = [shards[(r, 0)]["embedding.word_embeddings.weight"] for r in range(2)]
    assert [e.shape[0] for e in emb] == [128, 128] and padded_vocab_size(5, 2) == 256
    assert torch.equal(emb[0][:5], hf["model.embed_tokens.weight"])
    assert not emb[0][5:].any() and not emb[1].any()
    out = dict(export(shards, arch, 2, 1))
    assert torch.equal(out["lm_head.weight"], hf["lm_head.weight"])


def test_pp_stages_own_contiguous_layers_with_local_names():
    arch = make_arch(layers=4)
    assert [list(layer_range(arch, 2, p)) for p in range(2)] == [[0, 1], [2, 3]]
    hf = random_hf(arch)
    last = hf_to_mcore_shard(hf.__getitem__, arch, pp_rank=1, pp_size=2)
    assert "embedding.word_embeddings.weight" not in last and "output_layer.weight" in last
    assert torch.equal(last["decoder.layers.0.pre_mlp_layernorm.weight"],
                       hf["model.layers.2.post_attention_layernorm.weight"])
    first = hf_to_mcore_shard(hf.__getitem__, arch, pp_rank=0, pp_size=2)
    assert "decoder.final_layernorm.weight" not in first and "decoder.layers.2.mlp.linear_fc1.weight" not in first


def test_te_names_move_the_norms_into_the_following_linear():
    arch = make_arch("qwen3", layers=1)
    local, te = (set(expected_mcore_shapes(arch, te_names=t)) for t in (False, True))
    assert local - te == {"decoder.layers.0.input_layernorm.weight", "decoder.layers.0.pre_mlp_layernorm.weight"}
    assert te - local == {"decoder.layers.0.self_attention.linear_qkv.layer_norm_weight",
                          "decoder.layers.0.mlp.linear_fc1.layer_norm_weight"}
    assert "decoder.layers.0.self_attention.q_layernorm.weight" in te


def test_param_specs_give_tp_split_dims():
    dims = {p.name.split(".", 3)[-1]: p.tp_dim for p in mcore_params(make_arch("qwen2"), 2)}
    assert dims["self_attention.linear_qkv.weight"] == 0 and dims["self_attention.linear_qkv.bias"] == 0
    assert dims["self_attention.linear_proj.weight"] == 1 and dims["mlp.linear_fc2.weight"] == 1
    assert dims["mlp.linear_fc1.weight"] == 0 and dims["input_layernorm.weight"] is None


# --- byte-exact round trips ---------------------------------------------------------------------

ROUND_TRIP = list(itertools.product(("qwen2", "qwen3", "llama"), (False, True), (1, 2, 4), (1, 2), (False, True)))


@pytest.mark.parametrize("family, tied, tp, pp, te", ROUND_TRIP)
def test_round_trip_is_byte_identical(family, tied, tp, pp, te):
    from dcpo_mcore.engine.hf_arch import RopeScaling

    scaling = RopeScaling(8.0, 1.0, 4.0, 8192) if family == "llama" else None
    arch = make_arch(family, tied, rope_scaling=scaling)
    hf = random_hf(arch, dtype=torch.bfloat16 if tp == 2 else torch.float32, seed=tp * 10 + pp)
    shards = convert_all(hf, arch, tp, pp, te)
    for (r, p), shard in shards.items():
        assert {k: tuple(v.shape) for k, v in shard.items()} == expected_mcore_shapes(arch, tp, pp, p, te)
    if tied and pp > 1:  # the last stage's output layer is a copy of the embedding
        for r in range(tp):
            assert torch.equal(shards[(r, pp - 1)]["output_layer.weight"], shards[(r, 0)]["embedding.word_embeddings.weight"])
    out = export(shards, arch, tp, pp, te)
    assert [n for n, _ in out] == expected_hf_names(arch) and len(out) == len(hf)
    for name, t in out:
        assert t.dtype == hf[name].dtype and torch.equal(t, hf[name]), name
        assert t.is_contiguous()
    ptrs = [t.untyped_storage().data_ptr() for _, t in out]
    assert len(set(ptrs)) == len(ptrs), "yielded tensors must not share memory"


@pytest.mark.parametrize("groups, tp", [(1, 2), (2, 4), (1, 4)])
def test_round_trip_when_tp_exceeds_kv_groups(groups, tp):
    arch = make_arch("qwen2", heads=8, groups=groups)
    hf = random_hf(arch)
    assert dict(export(convert_all(hf, arch, tp, 2), arch, tp, 2)).keys() == hf.keys()
    for name, t in export(convert_all(hf, arch, tp, 2), arch, tp, 2):
        assert torch.equal(t, hf[name]), name


def test_export_streams_per_stage_in_order():
    arch = make_arch("llama", tied=True, layers=4)
    hf = random_hf(arch)
    shards = convert_all(hf, arch, 2, 2)
    calls = []
    stage1 = list(iter_mcore_to_hf(lambda p, n: calls.append((p, n)) or [shards[(r, p)][n] for r in range(2)],
                                   arch, 2, 2, pp_ranks=[1]))
    assert {p for p, _ in calls} == {1} and "output_layer.weight" not in {n for _, n in calls}
    stage0 = export(shards, arch, 2, 2, pp_ranks=[0])
    assert [n for n, _ in stage0 + stage1] == expected_hf_names(arch)
    assert stage1[-1][0] == "model.norm.weight" and stage0[0][0] == "model.embed_tokens.weight"


def test_replicated_params_accept_a_single_shard():
    arch = make_arch("qwen3", layers=2)
    hf = random_hf(arch)
    shards = convert_all(hf, arch, 2, 1)
    replicated = {p.name for p in mcore_params(arch, 2) if p.tp_dim is None}
    out = dict(iter_mcore_to_hf(lambda p, n: [shards[(0, p)][n]] if n in replicated else
                                [shards[(r, p)][n] for r in range(2)], arch, 2))
    assert all(torch.equal(out[n], hf[n]) for n in hf)


def test_real_tiny_checkpoints_round_trip(tmp_path):
    from safetensors.torch import load_file

    from dcpo_mcore.hf.tiny import make_tiny_hf_model

    for family, kw in (("qwen2", {"dtype": torch.bfloat16}), ("qwen3", {"tie_word_embeddings": True}),
                       ("llama", {"rope_scaling": True})):
        path = make_tiny_hf_model(family, tmp_path / family, **kw)
        arch, hf = ArchSpec.from_hf_config(path), load_file(path / "model.safetensors")
        out = export(convert_all(hf, arch, 2, 2), arch, 2, 2)
        assert [n for n, _ in out] == sorted(hf, key=expected_hf_names(arch).index)
        assert all(t.dtype == hf[n].dtype and torch.equal(t, hf[n]) for n, t in out)


# --- errors -------------------------------------------------------------------------------------


def one_line(info) -> str:
    text = str(info.value)
    assert "\n" not in text
    return text


def test_missing_extra_and_misshaped_hf_tensors():
    arch = make_arch("qwen2", layers=2)
    hf = random_hf(arch)
    missing = {k: v for k, v in hf.items() if k != "model.layers.1.self_attn.k_proj.bias"}
    with pytest.raises(MappingError) as info:
        hf_to_mcore_shard(missing.__getitem__, arch)
    assert one_line(info) == "missing HF tensor 'model.layers.1.self_attn.k_proj.bias'"
    with pytest.raises(MappingError, match="missing HF tensor 'model.layers.1.self_attn.k_proj.bias'"):
        check_hf_names(missing, arch)
    extra = dict(hf, **{"model.layers.2.mlp.gate_proj.weight": hf["model.layers.0.mlp.gate_proj.weight"],
                        "model.layers.0.self_attn.o_proj.bias": torch.zeros(32)})
    with pytest.raises(MappingError) as info:
        hf_to_mcore_shard(extra.__getitem__, arch, hf_names=extra)
    assert one_line(info) == ("2 unexpected HF tensor(s) for qwen2: model.layers.0.self_attn.o_proj.bias, "
                              "model.layers.2.mlp.gate_proj.weight")
    bad = dict(hf, **{"model.layers.0.mlp.up_proj.weight": torch.zeros(47, 32)})
    with pytest.raises(MappingError) as info:
        hf_to_mcore_shard(bad.__getitem__, arch)
    assert one_line(info) == "shape mismatch for HF tensor 'model.layers.0.mlp.up_proj.weight': expected (48, 32), got (47, 32)"


def test_tolerated_extras():
    # Old checkpoints keep rotary inv_freq buffers; some tied checkpoints still write lm_head.weight.
    arch = make_arch("llama", tied=True, layers=1)
    names = expected_hf_names(arch) + ["model.rotary_emb.inv_freq", "model.layers.0.self_attn.rotary_emb.inv_freq",
                                       "lm_head.weight"]
    check_hf_names(names, arch)
    with pytest.raises(MappingError, match="1 unexpected HF tensor\\(s\\) for llama: lm_head.bias"):
        check_hf_names(names + ["lm_head.bias"], arch)


@pytest.mark.parametrize("kw, tp, pp, message", [
    (dict(heads=6, groups=3), 2, 1, "tp_size 2 does not divide num_key_value_heads 3"),
    (dict(heads=6, groups=6), 4, 1, "tp_size 4 does not divide num_attention_heads 6"),
    (dict(ffn=50), 4, 1, "tp_size 4 does not divide ffn_hidden_size 50"),
    (dict(layers=3), 1, 2, "pp_size 2 does not divide num_layers 3"),
])
def test_parallel_sizes_that_do_not_divide(kw, tp, pp, message):
    arch = make_arch(**kw)
    with pytest.raises(MappingError) as info:
        hf_to_mcore_shard(random_hf(arch).__getitem__, arch, 0, tp, 0, pp)
    assert message in one_line(info)
    with pytest.raises(MappingError, match="does not divide"):
        expected_mcore_shapes(arch, tp, pp)


def test_export_errors_name_the_megatron_tensor():
    arch = make_arch("llama", layers=2)
    shards = convert_all(random_hf(arch), arch, 2, 1)
    name = "decoder.layers.1.mlp.linear_fc2.weight"
    with pytest.raises(MappingError) as info:
        export({**shards, (1, 0): {k: v for k, v in shards[(1, 0)].items() if k != name}}, arch, 2, 1)
    assert one_line(info) == f"missing megatron tensor {name!r} (pp_rank 0)"
    with pytest.raises(MappingError, match="'embedding.word_embeddings.weight' .*expected 2 TP shard\\(s\\), got 1"):
        list(iter_mcore_to_hf(lambda p, n: [shards[(0, p)][n]], arch, 2))
    wrong = {**shards, (1, 0): {**shards[(1, 0)], name: torch.zeros(32, 25)}}
    with pytest.raises(MappingError) as info:
        export(wrong, arch, 2, 1)
    assert one_line(info) == f"shape mismatch for megatron tensor {name!r} (pp_rank 0) TP shard 1: expected (32, 24), got (32, 25)"


def test_rank_out_of_range():
    arch = make_arch()
    with pytest.raises(MappingError, match="tp_rank 2 is out of range for size 2"):
        hf_to_mcore_shard(random_hf(arch).__getitem__, arch, tp_rank=2, tp_size=2)


# --- against real megatron-core GPTModels -------------------------------------------------------

HAS_CPU_COMPAT = importlib.util.find_spec("dcpo_mcore.engine.cpu_compat") is not None


@pytest.fixture(scope="module")
def megatron_results(tmp_path_factory):
    """One 2-rank launch: TP1 and TP2 models of tiny qwen2 / qwen3 (tied) / llama (llama3 rope)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from dcpo_mcore.hf.tiny import make_tiny_hf_model
    from tests.dist.launcher import launch

    cases, hf_logits = [], []
    for family, kw in (("qwen2", {}), ("qwen3", {"tie_word_embeddings": True}), ("llama", {"rope_scaling": True})):
        path = make_tiny_hf_model(family, tmp_path_factory.mktemp(family), num_layers=4, **kw)
        config = json.loads((path / "config.json").read_text())
        ids = torch.randint(0, config["vocab_size"], (1, 16), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            hf_logits.append(AutoModelForCausalLM.from_pretrained(path).eval()(ids).logits.float())
        cases.append({"config": config, "hf": load_file(path / "model.safetensors"), "input_ids": ids})
    results = launch("tests.dist.hf_mapping_worker:check_cases", world_size=2, args=(cases, (1, 2)),
                     kwargs={"forward": HAS_CPU_COMPAT}, timeout_s=240)
    return cases, hf_logits, results


def test_names_shapes_and_strict_load_match_megatron(megatron_results):
    cases, _, results = megatron_results
    checked = 0
    for rank_results in results:
        for tp in (1, 2):
            for case, res in zip(cases, rank_results[tp]):
                arch = ArchSpec.from_hf_config(case["config"])
                assert res["full"] == expected_mcore_shapes(arch, tp), (arch.family, tp)
                assert res["loaded"], res["why"]
                for p in range(2):
                    assert res["pp2"][p] == expected_mcore_shapes(arch, tp, 2, p), (arch.family, tp, p)
                checked += 1
    assert checked == 2 * 2 * 3


@pytest.mark.skipif(not HAS_CPU_COMPAT, reason="needs dcpo_mcore.engine.cpu_compat for a CPU forward")
def test_megatron_logits_match_transformers(megatron_results):
    _, hf_logits, results = megatron_results
    for tp in (1, 2):
        for ref, res in zip(hf_logits, results[0][tp]):
            assert res["logits"].shape == ref.shape
            assert torch.allclose(res["logits"], ref, rtol=0, atol=1e-5), (tp, (res["logits"] - ref).abs().max())
