"""A launched process group must not outlive its owner, even when the owner is SIGKILLed (guardian.py).

Real processes throughout: an owner Python process launches ``sleep`` (plus a grandchild) through
ManagedProcess, then is killed; the test watches /proc for the group.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dcpo_mcore.rollout.guardian import group_members
from dcpo_mcore.rollout.process import ManagedProcess
from tests.proc_helpers import wait_until as _wait_until

OWNER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from dcpo_mcore.rollout.process import ManagedProcess
    proc = ManagedProcess("sleeper", Path(sys.argv[1]))
    # a shell with a grandchild: the whole group must go, not just the leader
    pid = proc.launch(["bash", "-c", "sleep 300 & sleep 300; wait"], env={"PATH": "/usr/bin:/bin"})
    print(pid, flush=True)
    time.sleep(300)
""")


def _start_owner(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path / "sleeper.log")], stdout=subprocess.PIPE,
                             text=True, cwd=os.getcwd())
    pgid = int(owner.stdout.readline())
    assert _wait_until(lambda: len(group_members(pgid)) >= 2, 10), "the launched group never started"
    return owner, pgid


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_the_group_is_stopped_when_its_owner_dies(tmp_path, sig):
    owner, pgid = _start_owner(tmp_path)
    try:
        owner.send_signal(sig)
        owner.wait(timeout=10)
        assert _wait_until(lambda: not group_members(pgid), 15), f"group {pgid} outlived its owner"
        assert "owner pid" in (tmp_path / "sleeper.log").read_text()  # the guardian said why
    finally:
        for pid in group_members(pgid):
            os.kill(pid, signal.SIGKILL)


def test_a_normal_stop_ends_the_guardian_too(tmp_path):
    proc = ManagedProcess("sleeper", tmp_path / "sleeper.log")
    pid = proc.launch(["sleep", "300"], env={"PATH": "/usr/bin:/bin"})
    guardian = proc._guardian
    assert guardian is not None and guardian.poll() is None
    proc.stop(grace_s=5)
    assert not group_members(pid)
    assert guardian.poll() is not None  # reaped, not left as a zombie or a poller
    assert "owner pid" not in (tmp_path / "sleeper.log").read_text()


def test_the_guardian_leaves_the_group_alone_while_the_owner_lives(tmp_path):
    proc = ManagedProcess("sleeper", tmp_path / "sleeper.log")
    pid = proc.launch(["sleep", "300"], env={"PATH": "/usr/bin:/bin"})
    try:
        time.sleep(2.5)  # a few guardian polls
        assert proc.alive() and group_members(pid) == [pid]
        assert proc._guardian.poll() is None, (tmp_path / "sleeper.log").read_text()  # it is watching
    finally:
        proc.kill()
    assert not group_members(pid)
