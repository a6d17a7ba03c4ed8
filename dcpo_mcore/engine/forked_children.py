"""Processes forked inside :func:`die_with_this_thread` are killed by the kernel when the forking thread dies.

Why: megatron-core 0.16's synchronous ``torch_dist`` save forks one writer process per write bucket
(``FileSystemWriterAsync.write_preloaded_data_multiproc``, "fork" context) and joins them before it returns.
(0.19 writes from threads of the saving process instead, which die with it; the guard then has nothing
to do.)
A trainer SIGKILLed during a save (OOM killer, ``kill -9``, a node agent) never joins them: a writer is
re-parented to init and sleeps for ever on a lock copied from the dead parent, still holding the run's open
files (metrics.jsonl, the job's stdout), so a launcher waiting on those never finishes.

How: Linux's ``PR_SET_PDEATHSIG`` asks the kernel to send a signal to a process when the thread that forked
it exits. An at-fork hook sets it to SIGKILL in every child that the *armed* thread of the *armed* process
forks while the context is open; children forked elsewhere (other threads, ``subprocess`` launches, which
run no at-fork hooks, grandchildren) are untouched. If the parent died between the fork and the ``prctl``
the signal would never come, so the child checks its parent and exits at once.

On a platform without ``prctl`` (not Linux) the context does nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading

__all__ = ["die_with_this_thread"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_armed: tuple[int, int] | None = None  # (pid, thread ident) of the process and thread inside the context
# libc's prctl, looked up in the parent: a dlopen/dlsym in a child forked from a multithreaded process can
# deadlock on the dynamic loader's lock if another thread held it at the fork.
_prctl_fn = None
_forker_pid: int | None = None  # written by the before-fork hook in the parent, read by the child's copy
_hooks_registered = False
_lock = threading.Lock()


def _find_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _before_fork() -> None:
    global _forker_pid
    _forker_pid = os.getpid()


def _after_fork_in_child() -> None:
    # The child is a copy of the forking thread: its thread ident is the forker's, and _forker_pid is the
    # parent's pid as the before-fork hook wrote it. Both must match the armed ones, so a grandchild (forked
    # by the child, whose _forker_pid is the child's) is left alone.
    armed = _armed
    if armed is None or armed != (_forker_pid, threading.get_ident()):
        return
    prctl = _prctl_fn
    if prctl is None or prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return
    if os.getppid() != armed[0]:  # the parent died before the prctl took effect
        os._exit(1)


@contextlib.contextmanager
def die_with_this_thread():
    """Children this thread forks inside the block get SIGKILL when this thread (in practice: the process) dies.

    Not reentrant across threads: one thread at a time may hold it (saves are one at a time anyway).
    """
    global _armed, _hooks_registered, _prctl_fn
    with _lock:
        if not _hooks_registered:
            _prctl_fn = _find_prctl()
            os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
            _hooks_registered = True
        if _armed is not None:
            raise RuntimeError("die_with_this_thread is already open in another thread")
        _armed = (os.getpid(), threading.get_ident())
    try:
        yield
    finally:
        with _lock:
            _armed = None
