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


@pytest.mark.parametrize("main, prog", [("train_main", "dcpo-train"), ("demo_main", "dcpo-demo")])
def test_unknown_flag_is_one_line_and_exit_2(capsys, main, prog):
    from dcpo_mcore import cli

    with pytest.raises(SystemExit) as exc:
        getattr(cli, main)(["--no-such-flag"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and err.startswith(f"{prog}: error: "), err
    assert "--no-such-flag" in err or "--config" in err  # dcpo-train first misses its required --config


def test_subcommand_errors_name_the_tool(capsys):
    from dcpo_mcore.convert.cli import main

    assert main(["hf-to-mcore", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dcpo-convert: error: ") and "dcpo-convert hf-to-mcore --help" in err, err
