"""CheckpointManager with a real TP2 policy engine on 2 gloo ranks (worker: tests/dist/checkpoint_worker.py).

A resume must be indistinguishable from not stopping: the same weights, optimizer state and RNG
streams, and the next step's loss and grad norm bit for bit -- in the same processes, and in a fresh
job after a save that was SIGKILLed halfway (which must fall back to the previous checkpoint).
"""
import pytest

from tests.dist.launcher import DistLaunchError, launch

pytestmark = pytest.mark.dist
W = "tests.dist.checkpoint_worker"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ckpt_engine"))
    first = launch(f"{W}:save_and_reload", world_size=2, args=(root,), timeout_s=150)
    with pytest.raises(DistLaunchError) as killed:
        launch(f"{W}:killed_save", world_size=2, args=(root,), timeout_s=150)
    resumed = launch(f"{W}:resume_after_kill", world_size=2, args=(root,), timeout_s=150)
    return {"first": first, "killed": str(killed.value), "resumed": resumed}


def test_reload_in_the_same_job_restores_everything_bit_exact(runs):
    for r in runs["first"]:
        assert r["resume"] == r["path"] and r["path"].endswith("step_00000001")
        assert r["rng_files"] == ["rank0.pt", "rank1.pt"]
        assert r["differs_before_load"]  # the fresh engine really started elsewhere
        assert r["weights_equal"] and r["optimizer_equal"] and r["steps_done"] == 1
        assert r["state_equal"]
        assert r["draws_after_load"] == r["draws"]
        assert r["step2_after_load"] == r["step2"]


def test_tp_ranks_keep_their_own_tracker_streams(runs):
    a, b = runs["first"]
    assert a["draws"]["tracker"] != b["draws"]["tracker"]  # per-rank files, not one shared state


def test_kill_during_save_resumes_from_the_previous_checkpoint(runs):
    killed = runs["killed"]  # every rank SIGKILLed itself inside the save (the launcher reports exit -9)
    assert killed.count("exit -9") + killed.count("exit code -9") == 2 and "raised" not in killed
    first = runs["first"]
    for rank, r in enumerate(runs["resumed"]):
        assert len(r["leftovers_before"]) == 1 and r["leftovers_before"][0].startswith(".tmp-step2-")
        assert r["resume"].endswith("step_00000001") and r["step"] == 1
        assert r["entries_after"] == ["latest", "step_00000001"]  # the killed save's remains are gone
        assert r["draws"] == first[rank]["draws"]
        assert r["step2"] == first[rank]["step2"]  # a fresh job redoes step 2 bit for bit
