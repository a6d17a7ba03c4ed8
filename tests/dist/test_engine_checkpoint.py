"""Checkpoint save / resume through dist_checkpointing, with the distributed-optimizer guards.

Each scenario trains 2 steps, saves, and continues 2 steps (the uninterrupted reference); a fresh engine
at the same or another layout then loads the checkpoint and runs the same 2 steps. Resuming at the same
layout must be bit-exact; at another layout equal to float rounding (the layout-invariance tolerance).
The guard scenarios switch one guard of dcpo_mcore.engine.dist_ckpt off to show that it is needed.
"""
import pytest

from tests.dist.launcher import launch

pytestmark = pytest.mark.dist
W = "tests.dist.engine_worker"
RTOL = 1e-5
DO = {"use_distributed_optimizer": True}


def _cfg(name, **layout):
    return {"name": name, "layout": layout, "batching": {"num_microbatches": 2}}


ONE_RANK = [
    {"name": "tp1_distopt", "save": _cfg("tp1_distopt", **DO), "load": [
        _cfg("guarded", **DO),
        {**_cfg("no_materialize", **DO), "disable_guards": ["_materialize_adam_state"]},
        {**_cfg("no_step_fill", **DO), "disable_guards": ["_tolerate_missing_step"]},
        {**_cfg("no_unshare", **DO), "disable_guards": ["_unshare_step_tensors"]}]},
    {"name": "tp1_plain", "save": _cfg("tp1"), "load": [_cfg("tp1"), _cfg("tp1_distopt", **DO)]},
]
FOUR_RANKS = [
    {"name": "tp2_dp2_distopt", "save": _cfg("tp2_dp2_distopt", tp=2, **DO), "load": [
        _cfg("tp2_dp2_distopt", tp=2, **DO), _cfg("pp2_dp2_distopt", pp=2, **DO), _cfg("tp1_dp4_distopt", **DO),
        _cfg("tp2_pp2_distopt", tp=2, pp=2, **DO), _cfg("pp2_vpp2_dp2_distopt", pp=2, vpp=2, **DO)]},
    {"name": "tp2_pp2_plain", "save": _cfg("tp2_pp2", tp=2, pp=2), "load": [_cfg("pp2_dp2", pp=2)]},
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from tests.dist.engine_worker import make_tiny_models

    model = make_tiny_models(str(tmp_path_factory.mktemp("ckpt_models")))["qwen3"]  # tied embeddings
    args = (model["hf_dir"], model["vocab"])
    one = launch(f"{W}:checkpoint_scenarios", world_size=1, timeout_s=240,
                 args=(*args, str(tmp_path_factory.mktemp("ckpt1")), ONE_RANK))[0]
    four = launch(f"{W}:checkpoint_scenarios", world_size=4, timeout_s=300,
                  args=(*args, str(tmp_path_factory.mktemp("ckpt4")), FOUR_RANKS))
    for other in four[1:]:
        assert other == four[0]
    return {**one, **four[0]}


def _close(ref, got, exact):
    assert len(got) == len(ref)
    for a, b in zip(ref, got):
        if exact:
            assert a == b
        else:
            assert b["optim/lr"] == a["optim/lr"]
            assert b["loss/total"] == pytest.approx(a["loss/total"], rel=RTOL, abs=RTOL * abs(ref[0]["loss/total"]))
            assert b["loss/grad_norm"] == pytest.approx(a["loss/grad_norm"], rel=RTOL)
            assert b["clip/token_clip_ratio_global"] == a["clip/token_clip_ratio_global"]


@pytest.mark.parametrize("scenario,layout", [
    ("tp1_distopt", "guarded"), ("tp1_plain", "tp1"), ("tp2_dp2_distopt", "tp2_dp2_distopt")])
def test_resume_at_same_layout_is_exact(results, scenario, layout):
    r = results[scenario]
    got = r["resumed"][layout]
    assert "error" not in got, got.get("error")
    assert got["extra"] == {"note": "resume-test"} and got["steps_done"] == 4
    _close(r["reference"], got["steps"], exact=True)


@pytest.mark.parametrize("scenario,layout", [
    ("tp2_dp2_distopt", "pp2_dp2_distopt"), ("tp2_dp2_distopt", "tp1_dp4_distopt"),
    ("tp2_dp2_distopt", "tp2_pp2_distopt"), ("tp2_dp2_distopt", "pp2_vpp2_dp2_distopt"),
    ("tp2_pp2_plain", "pp2_dp2"),
])
def test_resume_at_another_layout_continues_the_run(results, scenario, layout):
    r = results[scenario]
    got = r["resumed"][layout]
    assert "error" not in got, got.get("error")
    assert got["steps_done"] == 4
    _close(r["reference"], got["steps"], exact=False)


def test_switching_optimizer_kind_is_refused(results):
    err = results["tp1_plain"]["resumed"]["tp1_distopt"]["error"]
    assert "use_distributed_optimizer=False" in err


def test_fresh_optimizer_guard_is_needed(results):
    # DistributedOptimizer.state_dict() asserts that exactly one 'step' exists: none in a fresh optimizer.
    assert results["tp1_distopt"]["resumed"]["no_materialize"]["error"].startswith("AssertionError")


def test_missing_step_guard_is_needed(results):
    assert "KeyError: 'step'" in results["tp1_distopt"]["resumed"]["no_step_fill"]["error"]


def test_shared_step_guard_is_needed(results):
    r = results["tp1_distopt"]
    got = r["resumed"]["no_unshare"]["steps"]
    assert got[0] == r["reference"][0]  # the first resumed step still uses the right step count...
    assert got[1]["loss/total"] != r["reference"][1]["loss/total"]  # ...then it has grown N times too fast
