"""The conversion spawner on a hung job: it gives up at the timeout, says where each rank was, and the
rank logs it keeps hold every thread's Python stack at that moment (SIGUSR1 -> faulthandler)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from dcpo_mcore.convert import spawn
from dcpo_mcore.convert.errors import RankCrash

pytestmark = pytest.mark.dist


def test_a_rank_that_hangs_leaves_where_it_was(tmp_path):
    # Rank 1 of 2 never starts its step: its config path is a FIFO nobody writes, so reading it blocks.
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    job = {"config": str(tmp_path), "tp": 2, "pp": 1, "vpp": None, "dtype": "float32", "progress": False,
           "steps": [], "pg_timeout_s": 60}
    with pytest.raises(RankCrash) as err:
        spawn.run_job(job, 2, timeout_s=40)
    msg = str(err.value)
    assert "timed out after 40 s with ranks [0, 1] still running" in msg
    # Both ranks formed the group and then blocked reading the FIFO config (ArchSpec.from_hf_config).
    assert "rank 0: process group of 2 ranks ready (gloo)" in msg
    assert "rank 1: process group of 2 ranks ready (gloo)" in msg
    job_dir = Path(re.search(r"kept in (\S+)\)", msg).group(1))
    for r in (0, 1):
        log = (job_dir / f"rank{r}.log").read_text()
        assert "from_hf_config" in log and "run_steps" in log, log  # the stack at the timeout
