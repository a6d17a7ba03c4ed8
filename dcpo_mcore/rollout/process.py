"""One child process we own (an SGLang server or the router): launch into its own process group with
output appended to a log file, stop the WHOLE group (SIGTERM, then SIGKILL after a grace period),
and read the tail of the log. Nothing here ever signals a process we did not start.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

from .guardian import group_members as _group_members

__all__ = ["ManagedProcess", "PORT_IN_USE_MARKERS"]

log = logging.getLogger(__name__)

_GUARDIAN = Path(__file__).with_name("guardian.py")

# What uvicorn / the Rust router print when their port was taken between our pick and their bind.
PORT_IN_USE_MARKERS = ("address already in use", "errno 98", "addrinuse")


class ManagedProcess:
    """A process started with ``start_new_session=True``, so its pid is also its group and session id."""

    def __init__(self, name: str, log_path: Path):
        self.name = name
        self.log_path = Path(log_path)
        self.popen: subprocess.Popen | None = None
        self.cmd: list[str] = []
        self.launches = 0
        self._log_offset = 0
        self._guardian: subprocess.Popen | None = None

    # ------------------------------------------------------------------ lifecycle
    def launch(self, cmd: Sequence[str], env: Mapping[str, str], cwd: str | os.PathLike | None = None) -> int:
        """Start ``cmd``; output is appended to the log after a header line. Returns the pid."""
        if self.alive():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self._reap_guardian()  # the previous launch's, if it died on its own
        self.cmd = list(cmd)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as f:
            self._log_offset = f.tell()
            header = (f"=== dcpo_mcore: launch {self.launches + 1} of {self.name} at "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(self.cmd)}\n")
            f.write(header.encode())
            f.flush()
            self.popen = subprocess.Popen(self.cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=dict(env), cwd=cwd, start_new_session=True)
            # Stops the group if this process is SIGKILLed (guardian.py); its own session, so a signal to
            # our process group does not take it down with us.
            self._guardian = subprocess.Popen([sys.executable, "-I", "-S", str(_GUARDIAN), str(self.popen.pid),
                                               str(os.getpid())], stdout=f, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True)
        self.launches += 1
        return self.popen.pid

    @property
    def pid(self) -> int | None:
        return None if self.popen is None else self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the process group, wait up to ``grace_s``, then SIGKILL what is left of it."""
        if self.popen is None:
            return
        pgid = self.popen.pid
        self._signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            self.popen.poll()
            if self.popen.returncode is not None and not _group_members(pgid):
                self._reap_guardian()
                return
            time.sleep(0.1)
        if self.alive() or _group_members(pgid):
            log.warning("%s (pid %s) did not exit %.0f s after SIGTERM; sending SIGKILL", self.name, pgid, grace_s)
        self._signal_group(pgid, signal.SIGKILL)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            log.error("%s (pid %s) survived SIGKILL", self.name, pgid)
        self._reap_guardian()

    def kill(self) -> None:
        """SIGKILL the whole group at once (what a crash looks like); reaps the leader."""
        if self.popen is not None:
            self._signal_group(self.popen.pid, signal.SIGKILL)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
            self._reap_guardian()

    def _reap_guardian(self) -> None:
        """We stopped the group ourselves, so its guardian has nothing left to do: end and reap it now
        rather than wait for its next poll."""
        if self._guardian is not None:
            if self._guardian.poll() is None:
                self._guardian.kill()
            self._guardian.wait()
            self._guardian = None

    def _signal_group(self, pgid: int, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            try:  # the leader is alive (not reaped), so the group id is certainly ours
                os.killpg(pgid, sig)
                return
            except ProcessLookupError:
                pass
        # Leader already exited and was reaped: signal only the leftovers of OUR group and session.
        for pid in _group_members(pgid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    # ------------------------------------------------------------------ log
    def log_since_launch(self, max_bytes: int = 1 << 20, *, since_launch: bool = True) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                end = f.tell()
                start = max(self._log_offset if since_launch else 0, end - max_bytes)
                f.seek(start)
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40, *, since_launch: bool = True) -> str:
        """The last ``lines`` lines of the log: of the latest launch, or (``since_launch=False``) of the
        file, so a crash stays visible after the watchdog relaunched the process."""
        return "\n".join(self.log_since_launch(256 * 1024, since_launch=since_launch).splitlines()[-lines:])

    def listens_on(self, port: int) -> bool | None:
        """Does a process of OUR group hold the listening socket on ``port``? (None: cannot tell,
        no /proc.) Guards against declaring a foreign server that squats our port healthy."""
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(table) as f:
                    rows = f.read().splitlines()[1:]
            except OSError:
                continue
            for row in rows:
                cols = row.split()
                if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{cols[9]}]")
        if not inodes:
            return None if not os.path.exists("/proc/net/tcp") else False
        if self.popen is None:
            return False
        for pid in _group_members(self.popen.pid):
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return True
                except OSError:
                    continue
        return False

    def port_conflict(self) -> bool:
        text = self.log_since_launch(256 * 1024).lower()
        return any(marker in text for marker in PORT_IN_USE_MARKERS)
