"""A crashed SGLang worker shows on the trainer side only as gloo's "Connection closed by peer", which
names neither the server nor the cause: the server's own log must reach the report."""
import logging
import sys
import time

from dcpo_mcore.rollout.process import ManagedProcess
from dcpo_mcore.rollout.server import LaunchSpec, ServerManager, _log_death_tail, _Slot
from dcpo_mcore.sync import weight_sync as ws


def _run(proc: ManagedProcess, code: str) -> None:
    proc.launch([sys.executable, "-c", code], env={})
    deadline = time.monotonic() + 30
    while proc.alive() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_the_log_tail_of_the_file_keeps_a_crash_after_a_relaunch(tmp_path):
    proc = ManagedProcess("server_0", tmp_path / "server_0.log")
    _run(proc, "print('Scheduler hit an exception: boom', flush=True)")
    _run(proc, "print('second launch', flush=True)")
    assert "boom" not in proc.log_tail(10) and "second launch" in proc.log_tail(10)  # this launch only
    whole = proc.log_tail(10, since_launch=False)
    assert "boom" in whole and "second launch" in whole


def _manager_with_one_slot(tmp_path) -> tuple[ServerManager, _Slot]:
    manager = ServerManager(LaunchSpec(model_path=str(tmp_path / "model")), tmp_path)
    slot = _Slot("server_0", "server", 0, 23456, tmp_path / "sglang" / "server_0.log")
    manager._workers = [slot]
    return manager, slot


def test_the_manager_gives_the_log_of_its_own_servers_only(tmp_path):
    manager, slot = _manager_with_one_slot(tmp_path)
    _run(slot.proc, "print('Killed: out of memory', flush=True)")
    path, tail = manager.server_log(slot.url)
    assert path == slot.proc.log_path and "out of memory" in tail
    assert manager.server_log("http://127.0.0.1:9") is None
    assert ServerManager.attach(["http://127.0.0.1:9"]).server_log("http://127.0.0.1:9") is None


def test_the_watchdog_logs_what_a_dead_server_printed_last(tmp_path, caplog):
    manager, slot = _manager_with_one_slot(tmp_path)
    _run(slot.proc, "import sys; print('Traceback: RuntimeError: shape mismatch in bucket 3', flush=True); sys.exit(1)")
    with caplog.at_level(logging.WARNING, logger="dcpo_mcore.rollout"):
        _log_death_tail(slot)
    assert "shape mismatch in bucket 3" in caplog.text and str(slot.proc.log_path) in caplog.text


def test_a_failed_sync_names_the_server_logs_and_logs_their_tails(tmp_path, caplog):
    class Manager:
        def server_log(self, url):
            return (tmp_path / f"{url[-1]}.log", f"last words of {url}") if url.endswith(("1", "2")) else None

    sync = ws.WeightSync.__new__(ws.WeightSync)
    sync.manager = Manager()
    sync.admins = [type("A", (), {"url": u})() for u in ("http://h:1", "http://h:2", "http://h:3")]
    with caplog.at_level(logging.WARNING, logger=ws.__name__):
        one = sync._point_at_logs("broadcast of bucket 2 failed: Connection closed by peer", None)
    assert "\n" not in one and one.endswith(f"(server log: {tmp_path / '1.log'}, {tmp_path / '2.log'})")
    assert "last words of http://h:1" in caplog.text and "last words of http://h:2" in caplog.text
    assert sync._point_at_logs("rejected", "http://h:2") == f"rejected (server log: {tmp_path / '2.log'})"
    assert sync._point_at_logs("rejected", "http://h:3") == "rejected"  # not ours: nothing to add
    sync.manager = None
    assert sync._point_at_logs("x", None) == "x"
