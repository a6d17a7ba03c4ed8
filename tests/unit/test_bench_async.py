"""tools/bench_async.py's arithmetic: a run's summary from its metrics rows, and the table's ratios."""
import importlib.util
import json
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("bench_async", Path(__file__).resolve().parents[2] / "tools/bench_async.py")
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def _row(step, seconds, idle, rollout_idle, orch, overlap):
    return {"step": step, "timing/step_seconds": seconds, "timing/trainer_idle_seconds": idle,
            "timing/rollout_idle_seconds": rollout_idle, "timing/orchestration_seconds": orch,
            "timing/overlap_ratio": overlap, "clip/token_clip_ratio": 0.01 * step, "adv/nonzero_ratio": 0.5,
            "mismatch/logprob_abs_mean": 0.0, "rollout/staleness_mean": 1.0, "mismatch/tis_weight_mean": 1.0}


def _run(tmp_path, name, rows):
    d = tmp_path / name
    d.mkdir()
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_summary_by_hand(tmp_path):
    rows = [{"step": 0, "eval/arith/avg@1": 0.25, "eval/balanced/avg@1": 0.9},
            _row(1, 2.0, 1.0, 0.5, 0.1, 0.0), _row(2, 6.0, 1.0, 0.5, 0.3, 1.0),
            {"step": 2, "eval/arith/avg@1": 0.5}]
    got = bench.summarise(_run(tmp_path, "a", rows))
    assert got["steps"] == 2 and got["seconds_per_step"] == 4.0 and got["overlap"] == 0.5
    assert got["trainer_idle_share"] == 2.0 / 8.0 and got["rollout_idle_share"] == 1.0 / 8.0
    assert got["orchestration_share"] == pytest.approx(0.4 / 8.0) and got["tcr"] == pytest.approx(0.015)
    assert got["accuracy"] == 0.5 and got["accuracy_step"] == 2 and got["accuracy_wall_s"] == 8.0
    assert got["curve"] == [(0, 0.0, 0.25), (2, 8.0, 0.5)]  # the balanced set is not the held-out curve


def test_table_ratios_are_against_k0_of_the_same_setting(tmp_path):
    fast = bench.summarise(_run(tmp_path, "k1", [_row(1, 1.0, 0, 0, 0, 1.0)]))
    slow = bench.summarise(_run(tmp_path, "k0", [_row(1, 2.0, 0, 0, 0, 0.0)]))
    lines = bench.table({"pinned": {1: fast, 0: slow}}).splitlines()
    assert lines[2].startswith("| pinned | 0 | 2.00 | 1.00x") and lines[3].startswith("| pinned | 1 | 1.00 | 0.50x")
