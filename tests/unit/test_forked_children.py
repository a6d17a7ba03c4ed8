"""Children forked inside die_with_this_thread() die with their SIGKILLed parent; no other process does.

Real processes: an owner Python process forks sleepers the way megatron's checkpoint writer does
(multiprocessing "fork" context) inside the block, plus controls outside it, from another thread and one
generation further down; the test SIGKILLs the owner and watches /proc.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from tests.proc_helpers import running as _running
from tests.proc_helpers import wait_until as _wait_until

OWNER = textwrap.dedent("""
    import json, multiprocessing as mp, os, threading, time
    from dcpo_mcore.engine.forked_children import die_with_this_thread

    def sleep_forever():
        time.sleep(300)

    def fork_sleeper():
        pid = os.fork()
        if pid == 0:
            sleep_forever()
            os._exit(0)
        return pid

    def parent_of_a_grandchild(write_fd):
        os.write(write_fd, f"{fork_sleeper()}\\n".encode())
        sleep_forever()

    pids = {"before": fork_sleeper()}
    ctx = mp.get_context("fork")
    with die_with_this_thread():
        writer = ctx.Process(target=sleep_forever)
        writer.start()
        pids["armed"] = writer.pid
        read_fd, write_fd = os.pipe()
        middle = ctx.Process(target=parent_of_a_grandchild, args=(write_fd,))
        middle.start()
        pids["armed_with_child"] = middle.pid
        with os.fdopen(read_fd) as lines:
            pids["grandchild"] = int(lines.readline())
        box = {}
        other = threading.Thread(target=lambda: box.update(pid=fork_sleeper()))
        other.start()
        other.join()  # that thread is gone now: a child wrongly tied to it would already be dead
        pids["other_thread"] = box["pid"]
    pids["after"] = fork_sleeper()
    print(json.dumps(pids), flush=True)
    sleep_forever()
""")


def test_only_the_armed_threads_own_children_die_with_a_sigkilled_parent():
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    pids = json.loads(owner.stdout.readline())
    try:
        time.sleep(0.5)
        assert all(_running(p) for p in pids.values()), {k: _running(p) for k, p in pids.items()}
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        dying, surviving = ("armed", "armed_with_child"), ("before", "after", "other_thread", "grandchild")
        assert _wait_until(lambda: not any(_running(pids[k]) for k in dying), 10), \
            {k: _running(pids[k]) for k in dying}
        time.sleep(0.5)
        assert all(_running(pids[k]) for k in surviving), {k: _running(pids[k]) for k in surviving}
    finally:
        owner.kill()
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
