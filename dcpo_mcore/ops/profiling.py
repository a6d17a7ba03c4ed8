"""Peak CPU-allocator bytes of a call, for the memory tests and tools/bench_loss.py.

RSS cannot see a buffer that is allocated and freed inside the call when the allocator reuses pages;
torch.profiler's memory events can, so the peak counts temporaries as well.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable

__all__ = ["peak_allocated_bytes"]


def peak_allocated_bytes(fn: Callable[[], Any]) -> int | None:
    """Peak bytes the torch CPU allocator held during ``fn()`` above what it held before (whatever ``fn``
    returns is dropped inside the measurement). None when the profiler recorded no memory event."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
        del result
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    finally:
        os.unlink(path)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    mem = [e["args"] for e in events if e.get("name") == "[memory]"]
    if not mem:
        return None
    before = mem[0]["Total Allocated"] - mem[0]["Bytes"]
    return max(m["Total Allocated"] for m in mem) - before
