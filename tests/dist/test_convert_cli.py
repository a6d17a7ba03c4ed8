"""dcpo-convert end to end on tiny Qwen2 (untied), Qwen3 (tied, bf16) and Llama (llama3 RoPE scaling).

One module-scoped fixture runs the real CLI in subprocesses -- hf-to-mcore at TP2 x PP2 (4 ranks; Qwen3
also with 2 virtual stages per PP rank), then mcore-to-hf at TP1 -- and every test reads those outputs:

* every exported tensor is byte-identical (same dtype) to the original, and transformers loads the
  export and gives the same logits;
* the TP2 x PP2 checkpoints load at TP1, TP2, PP2 and PP2 x VPP2 (and a TP1 checkpoint at TP2) with
  log-probs equal to each other and to HF within 1e-5 -- including Qwen2's vocabulary of 300, padded
  to 384 rows at TP1 but 512 at TP2;
* --verify and --check-logprobs pass on good conversions, and check-logprobs fails on a corrupted one;
* corrupt, truncated or mismatched checkpoints fail with one line and exit code 2.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dcpo_mcore.cli.convert import main
from dcpo_mcore.convert.verify import compare_hf_dirs, hf_logprobs, random_input_ids
from dcpo_mcore.engine.hf_arch import ArchSpec
from dcpo_mcore.hf.tiny import make_tiny_hf_model
from tests.dist.launcher import launch

pytestmark = pytest.mark.dist
REPO = Path(__file__).resolve().parents[2]
FAMILIES = {  # family -> (make_tiny_hf_model kwargs, extra hf-to-mcore flags, extra mcore-to-hf flags)
    "qwen2": ({"tokenizer_vocab_size": 300}, ["--verify", "--check-logprobs"], []),
    "qwen3": ({"tie_word_embeddings": True, "dtype": torch.bfloat16, "num_layers": 4}, ["--vpp", "2", "--verify"], []),
    "llama": ({"rope_scaling": True}, [], ["--max-shard-size", "100KB"]),
}


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "convert.py"), *args, "--timeout", str(timeout - 20)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def conv(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    out = {}
    for fam, (kw, import_flags, export_flags) in FAMILIES.items():
        hf = make_tiny_hf_model(fam, root / fam / "hf", **kw)
        ckpt, export = root / fam / "ckpt", root / fam / "export"
        log = _ok(cli("hf-to-mcore", "--hf", str(hf), "--out", str(ckpt), "--tp", "2", "--pp", "2", *import_flags))
        log += _ok(cli("mcore-to-hf", "--ckpt", str(ckpt), "--out", str(export), "--tp", "1", "--pp", "1",
                       *export_flags))
        out[fam] = {"hf": hf, "ckpt": ckpt, "export": export, "log": log, "arch": ArchSpec.from_hf_config(hf)}
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_round_trip_is_byte_identical(conv, family):
    c = conv[family]
    assert compare_hf_dirs(c["hf"], c["export"], c["arch"]) == len(list(_names(c)))
    meta = json.loads((c["ckpt"] / "dcpo_checkpoint.json").read_text())
    assert (meta["tp"], meta["pp"], meta["vpp"], meta["family"]) == (2, 2, 2 if family == "qwen3" else None, family)
    assert (c["ckpt"] / "hf" / "config.json").is_file() and (c["ckpt"] / "hf" / "tokenizer.json").is_file()
    assert not any(p.name.endswith((".partial", ".work")) for p in c["ckpt"].parent.iterdir())
    assert "tensor 1/" in c["log"] and "write HF: tensor" in c["log"]  # rank 0's progress


def _names(c):
    from dcpo_mcore.engine.hf_mapping import expected_hf_names

    return expected_hf_names(c["arch"])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_loads_in_transformers_with_same_logits(conv, family):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    c = conv[family]
    ids = random_input_ids(c["arch"].vocab_size, 2, 24, seed=1)
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(c["hf"]).eval()(ids).logits
        got_model = AutoModelForCausalLM.from_pretrained(c["export"]).eval()
        got = got_model(ids).logits
    assert torch.equal(ref, got)
    assert got_model.dtype == (torch.bfloat16 if family == "qwen3" else torch.float32)
    assert len(AutoTokenizer.from_pretrained(c["export"])) == len(AutoTokenizer.from_pretrained(c["hf"]))


def test_sharded_export_writes_an_index(conv):
    export = conv["llama"]["export"]
    index = json.loads((export / "model.safetensors.index.json").read_text())
    files = sorted(p.name for p in export.glob("*.safetensors"))
    assert len(files) > 2 and set(index["weight_map"].values()) == set(files)


def test_verify_and_check_logprobs_pass_on_good_conversions(conv):
    assert "all 27 tensors byte-identical" in conv["qwen2"]["log"]
    assert "check-logprobs: max abs diff" in conv["qwen2"]["log"]
    assert "byte-identical" in conv["qwen3"]["log"]


@pytest.fixture(scope="module")
def reloads(conv, tmp_path_factory):
    """One 2-rank launch: the TP2xPP2 checkpoints at other layouts, and a TP1 checkpoint at TP2."""
    q2, q3 = conv["qwen2"], conv["qwen3"]
    tp1_ckpt = tmp_path_factory.mktemp("tp1") / "ckpt"
    cfg2, cfg3 = str(q2["ckpt"] / "hf"), str(q3["ckpt"] / "hf")
    ids = {f: random_input_ids(conv[f]["arch"].vocab_size, 2, 16, seed=2) for f in ("qwen2", "qwen3")}
    i2, i3 = ids["qwen2"].tolist(), ids["qwen3"].tolist()
    cases = [
        {"config": cfg2, "layout": [1, 1, None], "ckpt": str(q2["ckpt"]), "ids": i2},   # TP1 (2 DP replicas)
        {"config": cfg2, "layout": [2, 1, None], "ckpt": str(q2["ckpt"]), "ids": i2},   # TP2
        {"config": cfg2, "layout": [1, 2, None], "ckpt": str(q2["ckpt"]), "ids": i2},   # PP2
        {"config": cfg2, "layout": [1, 1, None], "hf": str(q2["hf"]), "save": str(tp1_ckpt)},
        {"config": cfg2, "layout": [2, 1, None], "ckpt": str(tp1_ckpt), "ids": i2},     # TP1 -> TP2
        {"config": cfg3, "layout": [1, 2, 2], "ckpt": str(q3["ckpt"]), "ids": i3},      # PP2 x VPP2, tied
    ]
    per_rank = launch("tests.dist.convert_worker:run_cases", 2, args=(cases,), timeout_s=240)
    return {"cases": cases, "qwen2": per_rank, "qwen3": [r[5:] for r in per_rank], "ids": ids}


def _gather(per_rank: list[list[dict]], i: int, key: str):
    vals = [r[i][key] for r in per_rank if r[i][key] is not None]
    assert vals, f"no rank reported {key} for case {i}"
    return vals[0]


def test_reload_at_other_layouts_gives_identical_logprobs(conv, reloads):
    r = reloads["qwen2"]
    ref = hf_logprobs(conv["qwen2"]["hf"], reloads["ids"]["qwen2"])
    lps = {name: _gather(r, i, "logprobs") for i, name in [(0, "tp1"), (1, "tp2"), (2, "pp2"), (4, "tp1->tp2")]}
    for name, lp in lps.items():
        assert lp.shape == ref.shape, name
        assert (lp - ref).abs().max().item() <= 1e-5, f"{name} vs HF: {(lp - ref).abs().max().item():.3g}"
        assert (lp - lps["tp1"]).abs().max().item() <= 1e-5, name
    q3 = reloads["qwen3"]
    ref3 = hf_logprobs(conv["qwen3"]["hf"], reloads["ids"]["qwen3"])
    assert (_gather(q3, 0, "logprobs") - ref3).abs().max().item() <= 1e-5


def test_reload_reshards_vocab_padding(conv, reloads):
    """Qwen2's 300-token vocabulary is 384 rows at TP1 and 512 at TP2: the reload drops or zero-fills
    padding rows, never shifts or loses a real row."""
    r = reloads["qwen2"]
    assert _gather(r, 0, "vocab_rows") == 384 and _gather(r, 1, "vocab_rows") == 512
    assert _gather(r, 4, "vocab_rows") == 512  # written at TP1 (384 rows), read at TP2
    for i in (0, 1, 2, 4):
        assert all(rank[i]["padding_zero"] for rank in r), f"case {i}: nonzero padding rows"


def test_reload_at_other_layouts_exports_the_same_tensors(conv, reloads):
    from safetensors.torch import load_file

    hf2 = load_file(conv["qwen2"]["hf"] / "model.safetensors")
    for i in (0, 1, 2, 4):
        exported = _gather(reloads["qwen2"], i, "exported")
        assert set(exported) == set(hf2)
        assert all(torch.equal(exported[n], hf2[n]) for n in hf2), f"case {i}"
    hf3 = load_file(conv["qwen3"]["hf"] / "model.safetensors")
    exported = _gather(reloads["qwen3"], 0, "exported")  # loaded into float32: exact upcast of bf16
    assert set(exported) == set(hf3) and all(torch.equal(exported[n], hf3[n].float()) for n in hf3)


def test_check_logprobs_fails_on_a_corrupted_conversion(conv, tmp_path):
    from safetensors.torch import load_file, save_file

    c = conv["qwen2"]
    bad_hf = tmp_path / "bad_hf"
    shutil.copytree(c["hf"], bad_hf)
    sd = load_file(bad_hf / "model.safetensors")
    a, b = "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"
    sd[a], sd[b] = sd[b], sd[a]  # same shapes: every structural check passes, the model is wrong
    save_file(sd, bad_hf / "model.safetensors")
    _ok(cli("hf-to-mcore", "--hf", str(bad_hf), "--out", str(tmp_path / "bad_ckpt"), "--quiet"))
    proc = cli("check-logprobs", "--ckpt", str(tmp_path / "bad_ckpt"), "--hf", str(c["hf"]), "--quiet")
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "log-probs differ: max abs diff" in line and "> tolerance 0.0001" in line, line


def _corrupt_copy(ckpt: Path, dst: Path, how: str) -> Path:
    shutil.copytree(ckpt, dst)
    if how == "truncated":
        f = dst / "__1_0.distcp"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "deleted_shard":
        (dst / "__0_0.distcp").unlink()  # every rank writes __R_0 (0.16 also __R_1, 0.19 does not)
    elif how == "no_megatron_metadata":
        (dst / "metadata.json").unlink()
    elif how == "no_dcpo_metadata":
        (dst / "dcpo_checkpoint.json").unlink()
    elif how == "garbage_dcp_metadata":
        (dst / ".metadata").write_bytes(b"not a pickle")
    return dst


@pytest.mark.parametrize("how,match", [
    ("truncated", "is truncated: __1_0.distcp"), ("deleted_shard", "is incomplete: __0_0.distcp is missing"),
    ("no_megatron_metadata", "no readable metadata.json"), ("no_dcpo_metadata", "neither a dcpo-convert checkpoint (no dcpo_checkpoint.json)"),
    ("garbage_dcp_metadata", "is corrupt: cannot read .metadata"),
])
def test_corrupt_checkpoint_fails_before_starting_ranks(conv, tmp_path, capsys, how, match):
    bad = _corrupt_copy(conv["llama"]["ckpt"], tmp_path / "bad", how)
    assert main(["mcore-to-hf", "--ckpt", str(bad), "--out", str(tmp_path / "o"), "--timeout", "60"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and match in err, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_checkpoint_that_does_not_fit_its_config_fails_before_starting_ranks(conv, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(conv["llama"]["ckpt"], bad)
    cfg = json.loads((bad / "hf" / "config.json").read_text())
    cfg["intermediate_size"] *= 2
    (bad / "hf" / "config.json").write_text(json.dumps(cfg))
    proc = cli("mcore-to-hf", "--ckpt", str(bad), "--out", str(tmp_path / "o"), "--tp", "1", "--pp", "1")
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert "\n" not in err and "Traceback" not in err
    # the saved tensors' shapes are compared with the config's up front (convert/sources.py)
    assert "does not describe the model" in err and "mlp.linear_fc1.weight" in err, err
    assert not (tmp_path / "o.partial").exists()
