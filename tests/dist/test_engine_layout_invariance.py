"""Three DCPO optimizer steps give the same loss / grad-norm trajectory under every layout.

Same HF checkpoint, dropout off, LossSpec("dcpo", DcpoClipParams(), "otm"), group-standardised random
advantages, and old log-probs = the initial policy's plus noise (so the ratio moves with training and
clipping happens). Two launches: 1 rank (micro-batch counts, packing, recompute) and 4 ranks (TP, PP,
VPP, DP, SP, distributed optimizer, combinations). The reference is TP1 / DP1 / one micro-batch / padded.
The engine computes logits at response positions only (engine/output_rows.py); two configs detach
that and compute them everywhere, so the selection (and its sequence-parallel gather) is checked too.

Tolerances: grad norm 1e-5 relative. The loss of a single step can nearly cancel (a sum of positive and
negative advantage terms; ~0.008 here), so it is compared relative to the trajectory's loss scale
(mean |loss| over the steps); the token-weighted clip fraction must match exactly (same clipped tokens).
"""
import pytest

from tests.dist.launcher import launch

pytestmark = pytest.mark.dist
W = "tests.dist.engine_worker"
RTOL = 1e-5


def _cfg(name, layout=None, all_rows=False, **batching):
    return {"name": name, "layout": layout or {}, "batching": batching, "all_rows": all_rows}


ONE_RANK = [
    _cfg("tp1_mb1", num_microbatches=1),
    _cfg("tp1_mb2", num_microbatches=2),
    _cfg("tp1_mb4", num_microbatches=4),
    _cfg("tp1_mbs3", micro_batch_size=3),  # 16 samples -> 6 micro-batches of <= 3
    _cfg("tp1_packed_mb2", num_microbatches=2, packed=True),
    _cfg("tp1_packed_rows24", num_microbatches=1, packed=True, pack_length=24),  # several packed rows
    _cfg("tp1_recompute_full", {"recompute": "full"}, num_microbatches=2),
    _cfg("tp1_recompute_selective", {"recompute": "selective"}, num_microbatches=2),
    # the output layer over every position (hooks detached) against the response-rows-only reference
    _cfg("tp1_all_rows_mb2", all_rows=True, num_microbatches=2),
]
FOUR_RANKS = [
    _cfg("tp2_dp2", {"tp": 2}, num_microbatches=2),
    _cfg("tp2_sp_dp2_distopt", {"tp": 2, "sequence_parallel": True, "use_distributed_optimizer": True},
         num_microbatches=2),
    _cfg("pp2_dp2", {"pp": 2}, num_microbatches=2),
    _cfg("tp1_dp4_distopt", {"use_distributed_optimizer": True}, num_microbatches=1),
    _cfg("tp2_pp2", {"tp": 2, "pp": 2}, num_microbatches=4),
    _cfg("tp2_pp2_packed_sp_recompute", {"tp": 2, "pp": 2, "sequence_parallel": True, "recompute": "full"},
         num_microbatches=2, packed=True),
    _cfg("pp2_vpp2_dp2_distopt", {"pp": 2, "vpp": 2, "use_distributed_optimizer": True}, num_microbatches=4),
    _cfg("tp2_sp_dp2_all_rows", {"tp": 2, "sequence_parallel": True}, all_rows=True, num_microbatches=2),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from tests.dist.engine_worker import make_tiny_models

    model = make_tiny_models(str(tmp_path_factory.mktemp("inv_models")))["qwen2"]
    args = (model["hf_dir"], model["vocab"])
    one = launch(f"{W}:run_many", world_size=1, timeout_s=240, args=([
        ("train_trajectories", {"hf_dir": args[0], "vocab": args[1], "configs": ONE_RANK}),
        ("skip_nonfinite", {"hf_dir": args[0], "vocab": args[1]}),
    ],))[0]
    four = launch(f"{W}:train_trajectories", world_size=4, args=(*args, FOUR_RANKS), timeout_s=300)
    by_name = {r["name"]: r["metrics"] for r in one[0]}
    for rank_results in four:  # every rank reports the same all-reduced metrics
        assert [r["metrics"] for r in rank_results] == [r["metrics"] for r in four[0]]
    by_name.update({r["name"]: r["metrics"] for r in four[0]})
    return {"trajectories": by_name, "skip": one[1]}


def test_reference_trains_and_clips(runs):
    ref = runs["trajectories"]["tp1_mb1"]
    assert len(ref) == 3
    assert all(m["optim/skipped"] == 0.0 for m in ref)
    assert any(m["clip/token_clip_ratio_global"] > 0 for m in ref), "no clipping: the test would be weak"
    assert abs(ref[-1]["loss/total"] - ref[0]["loss/total"]) > 1e-2, "the weights did not move"


@pytest.mark.parametrize("name", [c["name"] for c in ONE_RANK[1:] + FOUR_RANKS])
def test_same_trajectory_as_reference(runs, name):
    ref, got = runs["trajectories"]["tp1_mb1"], runs["trajectories"][name]
    scale = sum(abs(m["loss/total"]) for m in ref) / len(ref)
    for step, (a, b) in enumerate(zip(ref, got)):
        assert abs(a["loss/total"] - b["loss/total"]) <= RTOL * scale, (step, a["loss/total"], b["loss/total"])
        assert abs(a["loss/grad_norm"] - b["loss/grad_norm"]) <= RTOL * a["loss/grad_norm"], (step, a, b)
        assert a["clip/token_clip_ratio_global"] == b["clip/token_clip_ratio_global"], step
        assert a["actor/entropy"] == pytest.approx(b["actor/entropy"], rel=RTOL)
        assert a["perf/response_tokens"] == b["perf/response_tokens"]
        assert b["optim/skipped"] == 0.0


def test_nonfinite_step_is_skipped_and_changes_nothing(runs):
    skip = runs["skip"]
    assert skip["skipped"] == 1.0
    assert skip["skipped_loss"] != skip["skipped_loss"]  # NaN
    assert skip["after"] == skip["fresh"]
