"""PhaseMeter: per-phase seconds for rank 0's metrics and per-rank peak RSS rows (dcpo_mcore/metrics/phases.py)."""
import json
import time

import pytest

from dcpo_mcore.metrics.keys import describe
from dcpo_mcore.metrics.phases import PhaseMeter, read_memory_rows, read_peak_rss_bytes, read_rss_bytes


def test_seconds_add_up_per_phase_and_reset_each_step(tmp_path):
    meter = PhaseMeter(tmp_path / "memory" / "rank_00001.jsonl")
    with meter("rollout"):
        time.sleep(0.05)
    with meter("train"):
        time.sleep(0.02)
    with meter("train"):  # a phase entered twice in a step adds up
        time.sleep(0.02)
    m = meter.end_step(3)
    assert set(m) == {"timing/rollout_seconds", "timing/train_seconds"}
    assert 0.05 <= m["timing/rollout_seconds"] < 0.5 and 0.04 <= m["timing/train_seconds"] < 0.5
    assert all(describe(k) for k in m)  # documented keys
    assert meter.end_step(4) == {}  # nothing carried into the next step


def test_peak_rss_sees_a_phase_allocation_and_the_next_phase_starts_lower(tmp_path):
    meter = PhaseMeter(tmp_path / "memory" / "rank_00000.jsonl")
    big = 256 * 2**20
    with meter("train"):
        buf = bytearray(big)  # zero pages: touch them so they count in RSS
        buf[::4096] = b"x" * len(buf[::4096])
        del buf
    with meter("sync"):
        pass
    meter.end_step(1)
    rows = read_memory_rows(tmp_path)
    row = rows[0][1]
    if row.get("peak_is_since_start"):
        pytest.skip("this kernel refuses to reset VmHWM")
    assert row["train_peak_rss_bytes"] - row["sync_peak_rss_bytes"] > 0.8 * big


def test_rows_per_rank_and_the_last_row_of_a_step_wins(tmp_path):
    mem = tmp_path / "memory"
    mem.mkdir()
    (mem / "rank_00000.jsonl").write_text(json.dumps({"step": 1, "train_peak_rss_bytes": 5}) + "\n"
                                          + json.dumps({"step": 1, "train_peak_rss_bytes": 7}) + "\n")
    (mem / "rank_00002.jsonl").write_text(json.dumps({"step": 1, "train_peak_rss_bytes": 9}) + "\n")
    assert read_memory_rows(tmp_path) == {0: {1: {"step": 1, "train_peak_rss_bytes": 7}},
                                          2: {1: {"step": 1, "train_peak_rss_bytes": 9}}}


def test_unknown_phase_is_a_bug_not_a_new_metric():
    with pytest.raises(ValueError, match="unknown phase 'rolout'"):
        with PhaseMeter()("rolout"):
            pass


def test_peak_rss_is_read():
    assert read_peak_rss_bytes() > 10 * 2**20


def test_current_rss_is_read_and_not_above_the_peak():
    now = read_rss_bytes()
    assert 10 * 2**20 < now <= read_peak_rss_bytes()
