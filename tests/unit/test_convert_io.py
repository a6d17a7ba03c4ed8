"""dcpo_mcore.convert pieces that need no ranks: safetensors reading/streaming, shard planning, the
export plan's order, layout checks, the byte comparison, progress output (no megatron is imported)."""
import io
import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from dcpo_mcore.convert import api
from dcpo_mcore.convert.errors import ConvertError, VerifyError
from dcpo_mcore.convert.hf_io import (HfWeights, SafetensorsStreamWriter, check_weights, copy_meta_files,
                                      parse_size, plan_shards, read_safetensors_header)
from dcpo_mcore.convert.progress import Progress
from dcpo_mcore.convert.stages import export_plan, hf_names_read_by, virtual_stage
from dcpo_mcore.convert.verify import compare_hf_dirs
from dcpo_mcore.engine.hf_arch import ArchSpec
from dcpo_mcore.engine.hf_mapping import expected_hf_names, expected_hf_shapes, iter_mcore_to_hf, mcore_params


def _arch(**kw) -> ArchSpec:
    cfg = {"architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 4, "hidden_size": 32,
           "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300,
           "max_position_embeddings": 128}
    cfg.update(kw)
    return ArchSpec.from_hf_config(cfg)


def _random_hf(arch: ArchSpec, dtype=torch.float32, seed=0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=gen).to(dtype) for n, s in expected_hf_shapes(arch).items()}


# ------------------------------------------------------------------ sizes and shard plans

@pytest.mark.parametrize("text,expected", [("2GB", 2 * 10**9), ("500MB", 5 * 10**8), ("100KB", 10**5),
                                           ("123", 123), ("1GiB", 2**30), ("1.5 mb", 1_500_000)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "2XB", "-1GB", "GB", "0"])
def test_parse_size_rejects_garbage(text):
    with pytest.raises(ConvertError):
        parse_size(text)


def test_plan_shards_respects_limit_and_order():
    shapes = {"a": (10,), "b": (10,), "c": (100,), "d": (1,)}
    plan = plan_shards(shapes, torch.float32, max_bytes=80)
    assert plan == [["a", "b"], ["c"], ["d"]]  # a tensor larger than the limit gets a shard of its own
    assert [n for shard in plan for n in shard] == list(shapes)
    assert plan_shards(shapes, torch.float32, 10**9) == [list(shapes)]


# ------------------------------------------------------------------ streaming writer

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("max_bytes", [10**9, 3000])
def test_stream_writer_is_readable_by_safetensors(tmp_path, dtype, max_bytes):
    arch = _arch(num_hidden_layers=2)
    tensors = _random_hf(arch, dtype)
    shapes = expected_hf_shapes(arch)
    w = SafetensorsStreamWriter(tmp_path, shapes, dtype, max_bytes)
    for name in shapes:
        w.write(name, tensors[name])
    w.finish()
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    index = tmp_path / "model.safetensors.index.json"
    if max_bytes == 10**9:
        assert files == ["model.safetensors"] and not index.exists()
    else:
        assert len(files) > 2 and index.exists()
        wm = json.loads(index.read_text())["weight_map"]
        assert set(wm) == set(shapes) and set(wm.values()) == set(files)
    loaded = {}
    for f in files:
        loaded.update(load_file(tmp_path / f))
    assert set(loaded) == set(tensors)
    for n, t in tensors.items():
        assert loaded[n].dtype == dtype and torch.equal(loaded[n].view(torch.uint8), t.view(torch.uint8))
    with HfWeights(tmp_path) as hw:  # our own reader, through the index when sharded
        assert torch.equal(hw.get("model.norm.weight"), tensors["model.norm.weight"])


def test_stream_writer_refuses_out_of_plan_tensors(tmp_path):
    shapes = {"a": (2,), "b": (3,)}
    w = SafetensorsStreamWriter(tmp_path, shapes, torch.float32, 10**9)
    with pytest.raises(RuntimeError, match="out of plan"):
        w.write("b", torch.zeros(3))
    with pytest.raises(RuntimeError, match="out of plan"):
        w.write("a", torch.zeros(2, dtype=torch.float64))
    w.write("a", torch.zeros(2))
    with pytest.raises(RuntimeError, match="only 1 of 2"):
        w.finish()
    w.abort()


# ------------------------------------------------------------------ reading and checking HF dirs

def test_header_errors_are_one_line(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x01\x02")
    with pytest.raises(ConvertError, match="truncated header"):
        read_safetensors_header(bad)
    bad.write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(ConvertError, match="cannot read safetensors"):
        read_safetensors_header(bad)


def test_check_weights_reports_missing_shape_and_dtype(tmp_path):
    arch = _arch(num_hidden_layers=2)
    t = _random_hf(arch)
    save_file(t, tmp_path / "model.safetensors")
    infos = HfWeights(tmp_path).infos
    assert check_weights(infos, arch) == torch.float32
    missing = dict(infos)
    del missing["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ConvertError, match="missing HF tensor 'model.layers.1.mlp.up_proj.weight'"):
        check_weights(missing, arch)
    t2 = dict(t, **{"model.norm.weight": torch.zeros(31)})
    save_file(t2, tmp_path / "model.safetensors")
    with pytest.raises(ConvertError, match="shape mismatch for HF tensor 'model.norm.weight'"):
        check_weights(HfWeights(tmp_path).infos, arch)
    t3 = dict(t, **{"model.norm.weight": t["model.norm.weight"].bfloat16()})
    save_file(t3, tmp_path / "model.safetensors")
    with pytest.raises(ConvertError, match="mix dtypes"):
        check_weights(HfWeights(tmp_path).infos, arch)


def test_missing_dir_and_bin_only_dir(tmp_path):
    with pytest.raises(ConvertError, match="does not exist"):
        HfWeights(tmp_path / "nope")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ConvertError, match="no \\*.safetensors"):
        HfWeights(tmp_path)


def test_copy_meta_files_skips_weights(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for name in ("config.json", "tokenizer.json", "chat_template.jinja", "model.safetensors",
                 "model.safetensors.index.json", "pytorch_model.bin", ".hidden"):
        (src / name).write_text("x")
    assert copy_meta_files(src, dst) == ["chat_template.jinja", "config.json", "tokenizer.json"]


# ------------------------------------------------------------------ export plan and stages

@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("tp,stages", [(1, 1), (2, 1), (1, 2), (2, 4)])
def test_export_plan_matches_the_mapping_request_order(tied, tp, stages):
    """Senders follow export_plan; the receiver follows iter_mcore_to_hf: they must agree exactly."""
    arch = _arch(tie_word_embeddings=tied)
    specs = {(s, p.name): p for s in range(stages) for p in mcore_params(arch, tp, stages, s)}
    asked = []

    def get_shards(s, name):
        asked.append((s, name))
        p = specs[(s, name)]
        return [torch.zeros(p.shape) for _ in range(tp if p.tp_dim is not None else 1)]

    names = [n for n, _ in iter_mcore_to_hf(get_shards, arch, tp, stages)]
    assert names == expected_hf_names(arch)
    assert asked == [(s, p.name) for s, p in export_plan(arch, tp, stages)]


def test_virtual_stages_and_names_read():
    # PP2 x VPP2: chunk v of PP rank p is stage v*2 + p (megatron's interleaved layer assignment)
    assert {(v, p): virtual_stage(v, 2, p) for v in range(2) for p in range(2)} == {
        (0, 0): 0, (0, 1): 1, (1, 0): 2, (1, 1): 3}
    arch = _arch(tie_word_embeddings=True)
    every = set()
    for p in range(2):  # PP2 x VPP2: rank p holds stages p and p + 2
        names = hf_names_read_by(arch, [virtual_stage(v, 2, p) for v in range(2)], 4)
        every.update(names)
        layers = {int(n.split(".")[2]) for n in names if n.startswith("model.layers.")}
        assert layers == {p, p + 2}
    assert every == set(expected_hf_names(arch))
    # the last stage reads embed_tokens too: it fills the tied output layer's copy
    assert "model.embed_tokens.weight" in hf_names_read_by(arch, [3], 4)


# ------------------------------------------------------------------ layout checks

@pytest.mark.parametrize("layout,match", [
    (api.Layout(tp=3), "--tp 3 does not divide num_attention_heads 4"),
    (api.Layout(tp=0), "must be >= 1"),
    (api.Layout(pp=3), "PP\\*VPP = 3 does not divide num_hidden_layers 4"),
    (api.Layout(pp=2, vpp=4), "PP\\*VPP = 8"),
    (api.Layout(vpp=2), "--vpp needs --pp >= 2"),
])
def test_check_layout_errors(layout, match):
    with pytest.raises(ConvertError, match=match):
        api.check_layout(_arch(), layout)


def test_check_layout_normalises_vpp_one():
    assert api.check_layout(_arch(), api.Layout(2, 2, 1)) == api.Layout(2, 2, None)


# ------------------------------------------------------------------ byte comparison, progress, errors

def test_compare_hf_dirs_is_bytewise(tmp_path):
    arch = _arch(num_hidden_layers=2)
    t = _random_hf(arch)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    t["model.norm.weight"][0] = float("nan")  # NaN != NaN by value, but the bytes are equal
    save_file(t, tmp_path / "a" / "model.safetensors")
    save_file(t, tmp_path / "b" / "model.safetensors")
    assert compare_hf_dirs(tmp_path / "a", tmp_path / "b", arch) == len(t)
    t2 = dict(t)
    t2["model.layers.1.self_attn.k_proj.bias"] = t["model.layers.1.self_attn.k_proj.bias"].clone()
    t2["model.layers.1.self_attn.k_proj.bias"][3] = -0.0 if t2["model.layers.1.self_attn.k_proj.bias"][3] == 0 else 0.0
    save_file(t2, tmp_path / "b" / "model.safetensors")
    with pytest.raises(VerifyError, match="model.layers.1.self_attn.k_proj.bias"):
        compare_hf_dirs(tmp_path / "a", tmp_path / "b", arch)
    t3 = {n: v.double() if n == "lm_head.weight" else v for n, v in t.items()}
    save_file(t3, tmp_path / "b" / "model.safetensors")
    with pytest.raises(VerifyError, match="lm_head.weight.*float64"):
        compare_hf_dirs(tmp_path / "a", tmp_path / "b", arch)


def test_progress_in_a_log_file_is_throttled():
    out = io.StringIO()
    bar = Progress("write HF", 50, stream=out, every_s=3600)
    for i in range(50):
        bar.update(f"t{i}", 1000)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # first and last only
    assert "tensor 50/50" in lines[-1] and "0.1 MB" in lines[-1]
    quiet = io.StringIO()
    Progress("x", 2, stream=quiet, enabled=False).update("a", 1)
    assert quiet.getvalue() == ""
