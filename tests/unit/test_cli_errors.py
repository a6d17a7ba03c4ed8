"""`dcpo-train`'s config-error handling (the training run itself: tests/integration/test_trainer.py)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _train(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcpo_mcore.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


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
