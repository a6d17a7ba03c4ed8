"""The CPU compatibility layer, tested directly (each check in fresh processes: it patches torch)."""
import pytest

from tests.dist.launcher import launch

pytestmark = pytest.mark.dist
W = "tests.dist.cpu_compat_worker"


def test_device_arguments_are_redirected_to_cpu():
    out = launch(f"{W}:check_device_redirection", world_size=1, timeout_s=90)[0]
    assert out == {
        "factory_str": "cpu", "factory_int": "cpu", "factory_device": "cpu", "cuda_is_noop": True,
        "to_cuda": "cpu", "to_dtype_kept": True, "type_float": "torch.cuda.FloatTensor",
        "type_bf16": "torch.cuda.BFloat16Tensor", "type_convert": True, "current_device": 0,
        "event_query": True,
    }


def test_custom_backward_runs_inside_the_mode():
    assert launch(f"{W}:check_backward_reentry", world_size=1, timeout_s=90)[0] == [2.0, 2.0, 2.0]


def test_megatron_rng_tracker_on_cpu():
    out = launch(f"{W}:check_rng_tracker", world_size=1, timeout_s=90)[0]
    assert out == {"default_restored": True, "stream_advances": True, "reseed_replays": True}


def test_full_recompute_replays_dropout_exactly():
    out = launch(f"{W}:check_recompute_replays_dropout", world_size=1, timeout_s=120)[0]
    assert out["dropout_active"], "dropout must change the loss, or this test proves nothing"
    assert out["loss_equal"] and out["grads_max_diff"] == 0.0


def test_sequence_parallel_matches_plain_tp2():
    outs = launch(f"{W}:check_sequence_parallel_tp2", world_size=2, timeout_s=150)
    for out in outs:
        assert out["sp_tagged_params"] == 5  # 2 layers x 2 norms + the final norm
        assert out["loss_diff"] < 1e-6
        assert out["grads_max_diff"] < 1e-5
