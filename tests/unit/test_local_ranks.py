"""The one local multi-rank supervisor (dcpo_mcore/local_ranks.py) with plain Python ranks (no torch):
exit order, the grace period after a failure, the deadline with each rank's last progress line, and
that a rank's helpers die with it even after the rank itself exited."""
from __future__ import annotations

import os
import sys
import time

import pytest

from dcpo_mcore.local_ranks import LocalRanks, rank_env


def _py(code: str):
    return lambda r: [sys.executable, "-c", code.replace("RANK_NO", str(r))]


def test_rank_env_puts_this_checkout_first_and_shares_the_cores():
    env = rank_env({"PYTHONPATH": "/elsewhere", "RANK": "3"}, 2)
    assert env["PYTHONPATH"].split(os.pathsep)[1] == "/elsewhere"
    assert os.path.isdir(os.path.join(env["PYTHONPATH"].split(os.pathsep)[0], "dcpo_mcore"))
    assert env["WORLD_SIZE"] == "2" and "RANK" not in env and env["PYTHONUNBUFFERED"] == "1"
    assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert rank_env({"OMP_NUM_THREADS": "7"}, 2)["OMP_NUM_THREADS"] == "7"
    assert rank_env({"OMP_NUM_THREADS": "7"}, 2, threads=1)["MKL_NUM_THREADS"] == "1"


def test_exit_order_and_rank_variables(tmp_path):
    code = ("import os, time; assert os.environ['RANK'] == os.environ['LOCAL_RANK'] == 'RANK_NO'; "
            "time.sleep(0.6 - 0.5 * RANK_NO)")
    ranks = LocalRanks.start(_py(code), 2, rank_env(os.environ, 2), tmp_path)
    outcome = ranks.supervise(timeout_s=60, grace_s=1)
    ranks.kill()
    assert outcome.exit_order == [1, 0] and not outcome.timed_out
    assert [p.returncode for p in ranks.procs] == [0, 0]


def test_after_a_failure_the_others_get_the_grace_period_then_are_killed(tmp_path):
    code = "import sys, time; sys.exit(3) if RANK_NO == 1 else time.sleep(60)"
    start = time.monotonic()
    ranks = LocalRanks.start(_py(code), 2, rank_env(os.environ, 2), tmp_path)
    outcome = ranks.supervise(timeout_s=60, grace_s=0.5)
    ranks.kill()
    assert outcome.exit_order == [1] and not outcome.timed_out
    assert ranks.procs[1].returncode == 3 and ranks.procs[0].returncode == -9
    assert time.monotonic() - start < 30


def test_a_deadline_reports_each_stuck_ranks_last_progress_line(tmp_path):
    code = ("import sys, time; from dcpo_mcore.rank_diagnostics import arm, mark; arm(RANK_NO); "
            "mark('waiting for Godot'); time.sleep(60)")
    ranks = LocalRanks.start(_py(code), 2, rank_env(os.environ, 2), tmp_path)
    outcome = ranks.supervise(timeout_s=6, grace_s=1)
    assert outcome.stuck == [0, 1]
    assert outcome.where == "rank 0: waiting for Godot; rank 1: waiting for Godot"
    for r in (0, 1):  # the stack dump asked for at the deadline is in the log
        assert "most recent call first" in (tmp_path / f"rank{r}.log").read_text()
    assert all(p.returncode == -9 for p in ranks.procs)


def test_helpers_of_a_finished_rank_die_with_its_session(tmp_path):
    pid_file = tmp_path / "helper.pid"
    code = (f"import subprocess; p = subprocess.Popen(['sleep', '60']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid))")
    ranks = LocalRanks.start(_py(code), 1, rank_env(os.environ, 1), tmp_path)
    assert ranks.supervise(timeout_s=60, grace_s=1).exit_order == [0]
    helper = int(pid_file.read_text())
    os.kill(helper, 0)  # still alive: the rank exited but left it behind
    ranks.kill()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(helper, 0)
        except ProcessLookupError:
            break
        # an orphan is reaped by init; until then it may linger as a zombie
        try:
            if open(f"/proc/{helper}/stat").read().split()[2] == "Z":
                break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the rank's helper survived kill()")
