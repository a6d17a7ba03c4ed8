"""Small helpers for tests that watch real processes through /proc."""
import os
import time
from pathlib import Path


def running(pid: int) -> bool:
    """The process exists and is not a zombie (a dead child nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(pred, timeout_s: float, poll_s: float = 0.1) -> bool:
    """Poll ``pred`` until it holds or ``timeout_s`` passes; its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(poll_s)
    return bool(pred())


def processes_holding(directory: Path) -> dict[int, str]:
    """pid -> command line of every process with a file under ``directory`` open (or it as its cwd)."""
    root, found = str(Path(directory).resolve()), {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = [f"fd/{fd}" for fd in os.listdir(f"/proc/{entry}/fd")]
        except (FileNotFoundError, PermissionError):
            continue  # gone meanwhile, or not ours
        if any(link == root or link.startswith(root + "/") for link in _links(entry, ["cwd", *fds])):
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    found[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")[:200]
            except OSError:
                continue
    return found


def _links(pid: str, names: list[str]) -> list[str]:
    out = []
    for name in names:
        try:
            out.append(os.readlink(f"/proc/{pid}/{name}"))
        except OSError:  # an fd closed since the listing (e.g. the one that listed it), or a process gone
            pass
    return out
