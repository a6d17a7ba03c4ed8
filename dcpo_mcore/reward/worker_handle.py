"""The parent's side of one grading worker (``dcpo_mcore.reward.worker``): start, talk, kill.

``RewardPool`` owns a few of these and does the scheduling; this module only knows how to launch
the subprocess and speak its JSON-lines protocol.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# The directory that contains the ``dcpo_mcore`` package, so workers import the same code even if
# the project is not pip-installed.
_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])


class WorkerHandle:
    """One grading subprocess and the parent's bookkeeping for it."""

    def __init__(self, popen: subprocess.Popen, startup_deadline: float) -> None:
        self.popen = popen
        self.fd = popen.stdout.fileno()
        self.buffer = b""
        self.ready = False  # set when the worker reports that math-verify is imported and warm
        self.startup_deadline = startup_deadline
        self.job_index: int | None = None  # batch index of the answer being graded
        self.job_deadline = 0.0

    @classmethod
    def start(cls, memory_limit_mb: int | None, startup_deadline: float) -> "WorkerHandle":
        """Launch ``python -m dcpo_mcore.reward.worker`` with the current interpreter."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(path for path in (_PROJECT_ROOT, env.get("PYTHONPATH")) if path)
        env.setdefault("OMP_NUM_THREADS", "1")
        command = [
            sys.executable,
            "-P",  # do not put the caller's cwd on sys.path: a stray ./sympy.py must not shadow sympy
            "-m",
            "dcpo_mcore.reward.worker",
            "--parent-pid",
            str(os.getpid()),
            "--memory-limit-mb",
            str(int(memory_limit_mb or 0)),
        ]
        # stderr is inherited: worker tracebacks belong in the trainer's log.
        popen = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        return cls(popen, startup_deadline)

    @property
    def idle(self) -> bool:
        return self.ready and self.job_index is None

    def send(self, message: dict) -> None:
        self.popen.stdin.write(json.dumps(message).encode() + b"\n")
        self.popen.stdin.flush()

    def read_messages(self) -> list[dict] | None:
        """Complete messages available now; ``None`` once the worker has closed its output (died)."""
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            return None
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        messages = []
        for line in lines:
            try:
                messages.append(json.loads(line))
            except ValueError:
                continue  # not protocol output; the worker keeps stdout clean, so just skip it
        return messages

    def exit_code(self, wait_s: float) -> int | None:
        """The exit status, waiting briefly: a worker that closed its pipe is about to exit."""
        try:
            return self.popen.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL (works even inside a long C call) and close our pipe ends. Reaping is left to
        the caller because a worker holding gigabytes can take a moment to exit."""
        if self.popen.poll() is None:
            self.popen.kill()
        for stream in (self.popen.stdin, self.popen.stdout):
            try:
                stream.close()
            except OSError:
                pass


def kill_unreaped_workers(owner_pid: int, live: dict[int, subprocess.Popen]) -> None:
    """Finalizer: kill workers of a pool that was never closed (GC or interpreter exit)."""
    if os.getpid() != owner_pid:  # a forked child inherited the pool; the workers are not its own
        return
    for popen in list(live.values()):
        try:
            popen.kill()
            popen.wait(timeout=5)
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass
    live.clear()
