"""Wait until every URL answers its health check, with a deadline; fail fast when a watched process dies.

    python -m dcpo_mcore.launch.wait_healthy http://n3:27092 http://n4:27092 --deadline 900 --pid "$SERVER_PID"

Exit 0 when all answer HTTP 200 on ``--path`` (default ``/health``; SGLang answers 503 until its warm-up is
done); exit 1 with one line naming what is not healthy when the deadline passes or a ``--pid`` exits.
"""
from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Sequence


def probe(url: str, path: str, timeout_s: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + path, timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def pid_alive(pid: int) -> bool:
    """Running and not a zombie (an exited background srun stays a zombie until the shell reaps it)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split()[1] not in ("Z", "X")
    except OSError:
        return False
    return False


def wait_healthy(urls: Sequence[str], deadline_s: float, *, path: str = "/health", pids: Sequence[int] = (),
                 interval_s: float = 2.0, check: Callable[[str, str], bool] = probe,
                 alive: Callable[[int], bool] = pid_alive, log=print) -> str | None:
    """None when all are healthy, else the one-line reason."""
    start = time.monotonic()
    pending = list(urls)
    last_note = start
    while True:
        pending = [u for u in pending if not check(u, path)]
        if not pending:
            log(f"[wait_healthy] {len(urls)} endpoint(s) healthy after {time.monotonic() - start:.0f} s")
            return None
        dead = [p for p in pids if not alive(p)]
        if dead:
            return (f"process {', '.join(map(str, dead))} exited before {', '.join(pending)} became healthy; "
                    "see its log in the job's log directory")
        elapsed = time.monotonic() - start
        if elapsed >= deadline_s:
            return (f"{', '.join(pending)} not healthy ({path} != 200) after {deadline_s:.0f} s; see the server "
                    "logs in the job's log directory, or raise startup_timeout_s in the launch settings")
        if time.monotonic() - last_note >= 30:
            log(f"[wait_healthy] waiting for {len(pending)} endpoint(s) ({elapsed:.0f}/{deadline_s:.0f} s)")
            last_note = time.monotonic()
        time.sleep(min(interval_s, max(0.0, deadline_s - elapsed)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dcpo_mcore.launch.wait_healthy")
    ap.add_argument("urls", nargs="+")
    ap.add_argument("--deadline", type=float, required=True, help="seconds")
    ap.add_argument("--path", default="/health")
    ap.add_argument("--pid", type=int, action="append", default=[], help="fail fast if this process exits")
    ap.add_argument("--interval", type=float, default=2.0)
    args = ap.parse_args(argv)
    why = wait_healthy(args.urls, args.deadline, path=args.path, pids=args.pid, interval_s=args.interval,
                       log=lambda m: print(m, flush=True))
    if why:
        print(f"wait_healthy: error: {why}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
