"""GPU tier of the policy engine: Transformer Engine spec in bf16 and an FP8 step (skipped without CUDA).

Needs one CUDA GPU with Transformer Engine installed (FP8: Hopper or newer). Runs one rank over NCCL.
"""
import pytest

from tests.dist.launcher import launch

pytestmark = [pytest.mark.gpu, pytest.mark.dist]
W = "tests.dist.engine_worker_gpu"
# bf16 has an 8-bit mantissa: per-token log-probs of a random tiny model (~ -6) move by a few 1e-2.
BF16_MAX, BF16_MEAN = 0.1, 0.02


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tests.dist.engine_worker import make_tiny_models

    return make_tiny_models(str(tmp_path_factory.mktemp("gpu_models")))["qwen2"]


def test_te_spec_bf16_matches_local_spec_and_hf(model):
    out = launch(f"{W}:te_vs_local_bf16", world_size=1, backend="nccl", timeout_s=300,
                 args=(model["hf_dir"], model["vocab"]))[0]
    assert out["uses_te"] == {"te": True, "te_packed": True, "local": False}, "Transformer Engine did not load"
    for name, (worst, mean) in out["diffs"].items():
        assert worst < BF16_MAX and mean < BF16_MEAN, (name, worst, mean)


@pytest.mark.parametrize("fp8,recipe", [("hybrid", "delayed"), ("e4m3", "tensorwise")])
def test_fp8_forward_backward_step_runs(model, fp8, recipe):
    out = launch(f"{W}:fp8_train_step", world_size=1, backend="nccl", timeout_s=300,
                 args=(model["hf_dir"], model["vocab"], fp8, recipe))[0]
    assert out["uses_te"]
    assert out["finite"] and out["metrics"]["optim/skipped"] == 0.0
    assert out["moved"], "the FP8 step did not change the weights"
