"""dcpo-convert refuses bad input with one line on stderr and exit code 2, before starting any rank.

Most cases call ``cli.main`` in-process (they fail before any rank or megatron import); one runs the
real console entry in a subprocess to prove there is no traceback and no slow start-up.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dcpo_mcore.cli.convert import main
from dcpo_mcore.hf.tiny import make_tiny_hf_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    return make_tiny_hf_model("qwen2", tmp_path_factory.mktemp("hf") / "qwen2")


def _copy_with(hf: Path, dst: Path, *, config=None, tensors=None) -> Path:
    shutil.copytree(hf, dst)
    if config:
        cfg = json.loads((hf / "config.json").read_text())
        cfg.update(config)
        (dst / "config.json").write_text(json.dumps(cfg))
    if tensors:
        sd = load_file(hf / "model.safetensors")
        tensors(sd)
        save_file(sd, dst / "model.safetensors")
    return dst


def _fails(capsys, argv, match: str, code: int = 2) -> str:
    if argv[0] in ("hf-to-mcore", "mcore-to-hf", "check-logprobs"):
        # Bounds a regression that would start ranks from inside pytest instead of failing up front.
        argv = [*argv, "--timeout", "60"]
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dcpo-convert: error: ") and match in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


def test_missing_hf_dir(capsys, tmp_path):
    _fails(capsys, ["hf-to-mcore", "--hf", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "does not exist")


def test_unsupported_architecture(capsys, hf, tmp_path):
    gpt2 = _copy_with(hf, tmp_path / "gpt2", config={"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    _fails(capsys, ["hf-to-mcore", "--hf", str(gpt2), "--out", str(tmp_path / "o")],
           "unsupported architecture GPT2LMHeadModel")


@pytest.mark.parametrize("args,match", [
    (["--tp", "3"], "--tp 3 does not divide num_attention_heads 4"),
    (["--tp", "8"], "--tp 8 does not divide num_attention_heads 4"),
    (["--pp", "4"], "PP*VPP = 4 does not divide num_hidden_layers 2"),
    (["--vpp", "2"], "--vpp needs --pp >= 2"),
])
def test_layout_that_does_not_fit(capsys, hf, tmp_path, args, match):
    _fails(capsys, ["hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "o"), *args], match)


def test_tp_not_dividing_kv_groups(capsys, tmp_path):
    # 6 query heads in 3 key/value groups: TP 2 divides the heads but not the groups (and is no
    # multiple of them), which megatron cannot split.
    hf6 = make_tiny_hf_model("qwen2", tmp_path / "h6", hidden_size=96, num_heads=6, num_kv_heads=3,
                             tokenizer_vocab_size=260)
    capsys.readouterr()  # the model factory's own progress output
    _fails(capsys, ["hf-to-mcore", "--hf", str(hf6), "--out", str(tmp_path / "o"), "--tp", "2"],
           "--tp 2 does not divide num_key_value_heads 3")


def test_missing_tensor(capsys, hf, tmp_path):
    bad = _copy_with(hf, tmp_path / "bad", tensors=lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight"))
    _fails(capsys, ["hf-to-mcore", "--hf", str(bad), "--out", str(tmp_path / "o")],
           "missing HF tensor 'model.layers.1.mlp.up_proj.weight'")


def test_shape_mismatch(capsys, hf, tmp_path):
    def shrink(sd):
        sd["model.layers.0.mlp.down_proj.weight"] = torch.zeros(64, 100)
    bad = _copy_with(hf, tmp_path / "bad", tensors=shrink)
    _fails(capsys, ["hf-to-mcore", "--hf", str(bad), "--out", str(tmp_path / "o")],
           "shape mismatch for HF tensor 'model.layers.0.mlp.down_proj.weight'")


def test_config_that_disagrees_with_the_tensors(capsys, hf, tmp_path):
    bad = _copy_with(hf, tmp_path / "bad", config={"intermediate_size": 256})
    _fails(capsys, ["hf-to-mcore", "--hf", str(bad), "--out", str(tmp_path / "o")], "shape mismatch")


def test_existing_output_and_missing_checkpoint(capsys, hf, tmp_path):
    _fails(capsys, ["hf-to-mcore", "--hf", str(hf), "--out", str(hf)], "already exists and is not empty")
    _fails(capsys, ["mcore-to-hf", "--ckpt", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
           "does not exist")
    _fails(capsys, ["mcore-to-hf", "--ckpt", str(hf), "--out", str(tmp_path / "o")],
           "is neither a dcpo-convert checkpoint (no dcpo_checkpoint.json) nor a dcpo-train checkpoint")
    assert not (tmp_path / "o.partial").exists()


def _trainer_step(root: Path, step: int, config: dict) -> Path:
    """A dcpo-train checkpoint's files as the trainer writes them (manifest, trainer state, one rank's RNG
    file), with a made-up (empty) model, so it passes the trainer's own validation."""
    from dcpo_mcore.checkpoint.files import build_manifest

    d = root / "checkpoints" / f"step_{step:08d}"
    (d / "model").mkdir(parents=True)
    (d / "model" / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')
    (d / "trainer_state.json").write_text(json.dumps({"step": step, "config_json": json.dumps(config)}))
    (d / "rng").mkdir()
    (d / "rng" / "rank0.pt").write_bytes(b"rng state")
    (d / "manifest.json").write_text(json.dumps(build_manifest(d, step, 1)))
    return d


def test_trainer_checkpoint_problems_are_one_line(capsys, tmp_path):
    run = tmp_path / "run"
    config = {"run_dir": "run", "model": {"hf_path": "no/such/model", "init_checkpoint": None},
              "parallel": {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1}}
    step = _trainer_step(run, 2, config)
    out = ["--out", str(tmp_path / "o")]
    # the run's hf_path does not resolve from here nor from the run's launch directory
    _fails(capsys, ["mcore-to-hf", "--ckpt", str(step), *out], "cannot find the HF config and tokenizer")
    # a damaged file fails the manifest check before anything is loaded
    (step / "trainer_state.json").write_text("{}")
    _fails(capsys, ["mcore-to-hf", "--ckpt", str(step), *out], "is not usable: trainer_state.json has")
    # a run directory whose every checkpoint is damaged
    _fails(capsys, ["mcore-to-hf", "--ckpt", str(run), *out], "no complete checkpoint under")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_bad_arguments(capsys, hf, tmp_path):
    _fails(capsys, ["hf-to-mcore", "--hf", str(hf)], "required: --out")
    _fails(capsys, ["frobnicate"], "invalid choice")
    _fails(capsys, ["hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "o"), "--tp", "two"], "invalid int")
    _fails(capsys, ["mcore-to-hf", "--ckpt", str(hf), "--out", str(tmp_path / "o"), "--max-shard-size", "2XB"],
           "cannot parse size")
    _fails(capsys, ["hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "o"), "--check-logprobs",
                    "--num-seqs", "0"], "--num-seqs")


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert "hf-to-mcore" in capsys.readouterr().out


def test_console_entry_in_a_subprocess(hf, tmp_path):
    gpt2 = _copy_with(hf, tmp_path / "gpt2", config={"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "convert.py"), "hf-to-mcore", "--hf", str(gpt2),
                           "--out", str(tmp_path / "o"), "--tp", "2"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unsupported architecture" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
