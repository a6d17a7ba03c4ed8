"""Self-tests of tests/dist/launcher.py: results come back in rank order, a failing rank fails the
launch fast with its traceback, and a hung collective is killed at the timeout instead of hanging CI.
(Named test_vocab_parallel_* only because of file ownership; it tests the generic launcher.)"""
import os
import time

import pytest

from tests.dist.launcher import DistLaunchError, launch
from tests.dist.vocab_parallel_worker import rank_and_args


@pytest.mark.dist
def test_results_in_rank_order_with_args_and_single_threaded_ranks():
    out = launch(rank_and_args, 2, args=(1, "a"), kwargs={"k": [2]}, timeout_s=90)
    assert [o["rank"] for o in out] == [0, 1]
    for o in out:
        assert o["world"] == 2 and o["args"] == (1, "a") and o["kwargs"] == {"k": [2]}
        assert o["omp"] == "1" and o["threads"] == 1
        assert o["sum"] == 1.0  # a real all-reduce over gloo: 0 + 1


@pytest.mark.dist
def test_a_raising_rank_fails_fast_with_its_traceback():
    start = time.monotonic()
    with pytest.raises(DistLaunchError) as err:
        launch("tests.dist.vocab_parallel_worker:hang_or_raise", 2, args=("raise",), timeout_s=120, grace_s=1)
    msg = str(err.value)
    assert "rank 1 raised" in msg and "deliberate failure on rank 1" in msg
    # rank 0 was blocked in the barrier: gloo errored it out, or the launcher killed it
    assert "rank 0 raised" in msg or "rank 0: killed after another rank failed" in msg
    assert time.monotonic() - start < 60  # far below timeout_s: the blocked rank did not wait for it


@pytest.mark.dist
def test_a_hung_collective_is_killed_at_the_timeout(tmp_path):
    start = time.monotonic()
    with pytest.raises(DistLaunchError, match=r"timed out after 8 s; ranks \[0, 1\] had not finished") as err:
        launch("tests.dist.vocab_parallel_worker:hang_or_raise", 2, args=("hang",), timeout_s=8,
               env={"DIST_TEST_PID_DIR": str(tmp_path)}, log_tail_chars=20000)
    assert time.monotonic() - start < 8 + 15
    # A hang says where it was: each rank's last progress line, then its Python stack at the timeout.
    msg = str(err.value)
    assert "rank 0: running tests.dist.vocab_parallel_worker:hang_or_raise" in msg  # its last line
    assert "rank 1: process group of 2 ranks ready (gloo)" in msg
    stacks = msg.split("--- rank 1 output")
    assert "in hang_or_raise" in stacks[0] and "in hang_or_raise" in stacks[1]
    assert "barrier" in stacks[1]  # rank 1 was waiting in the barrier rank 0 never joins
    pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
    assert len(pids) == 2, "the ranks did not start"
    for pid in pids:  # every rank is gone, not left running in the background
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_target_must_be_importable():
    with pytest.raises(ValueError, match="module:function"):
        launch("no_colon_here", 1)
    with pytest.raises(ValueError, match="not an importable module-level function"):
        launch(lambda: 0, 1)
