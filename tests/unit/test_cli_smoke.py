"""`dcpo-train` end to end on the algorithm smoke run, and its config-error handling."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _train(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcpo_mcore.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_smoke_run_learns_and_writes_run_dir(tmp_path):
    proc = _train("--config", "configs/demo_cpu.yaml", "steps=40", f"run_dir={tmp_path}", "logging.log_interval=20")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    # Margin, not the best case: the same run's start vs end (measured +29 points at seed 1).
    assert summary["greedy_acc_end"] >= summary["greedy_acc_start"] + 0.10, summary
    assert summary["prompts_in_sas_store"] > 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 41))
    for key in ("reward/mean", "adv/nonzero_ratio", "clip/token_clip_ratio", "loss/grad_norm", "actor/entropy"):
        assert all(isinstance(r[key], float) for r in rows), key
    assert (tmp_path / "config.yaml").exists()


def test_bad_config_is_one_line_per_problem_and_exit_2(tmp_path):
    proc = _train("--config", "configs/demo_cpu.yaml", "algo.eps_low=0.3", "rollout.n_samples_per_prompt=1",
                  f"run_dir={tmp_path}", timeout=120)
    assert proc.returncode == 2
    assert "algo.eps_low" in proc.stderr and "rollout.n_samples_per_prompt" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "config.yaml").exists()


def test_missing_config_file(tmp_path):
    proc = _train("--config", str(tmp_path / "nope.yaml"), timeout=120)
    assert proc.returncode == 2 and "nope.yaml" in proc.stderr and "Traceback" not in proc.stderr
