"""`dcpo-train`'s config-error handling (the training run itself: tests/integration/test_trainer.py)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


def test_check_lists_every_problem_one_line_each_and_starts_nothing(tmp_path):
    proc = _train("--check", "--config", "configs/demo_cpu.yaml", "algo.dual_clip_c=3.0",
                  "rollout.n_samples_per_prompt=1", f"data.eval_files=[{tmp_path}/missing.parquet]",
                  f"run_dir={tmp_path}/run", timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("algo.dual_clip_c: not a setting of algo.name=dcpo")
    # A field-valid config with cross-field and path problems: all of them, one line each.
    proc = _train("--check", "--config", "configs/demo_cpu.yaml", "rollout.n_samples_per_prompt=1",
                  "algo.eps_low=0.3", f"run_dir={tmp_path}/run", timeout=120)
    assert proc.returncode == 2
    assert [line.split(":")[0] for line in proc.stderr.splitlines()] == ["rollout.n_samples_per_prompt",
                                                                        "algo.eps_low"]
    proc = _train("--check", "--config", "configs/demo_cpu.yaml", f"data.eval_files=[{tmp_path}/missing.parquet]",
                  "data.train_files=[nope.jsonl]", f"run_dir={tmp_path}/run", timeout=120)
    assert proc.returncode == 2
    assert [line.split(":")[0] for line in proc.stderr.splitlines()] == ["data.train_files[0]", "data.eval_files[0]"]
    assert not (tmp_path / "run").exists()  # nothing written


def test_check_of_a_good_config_exits_0(tmp_path):
    proc = _train("--check", "--config", "configs/tiny_test.yaml", "data.train_files=[configs/tiny_test.yaml]",
                  f"run_dir={tmp_path}/run", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "is valid" in proc.stdout and not (tmp_path / "run").exists()
    resolved = yaml.safe_load(proc.stdout)  # the resolved config, every default written out
    assert resolved["algo"]["eps_low"] == 0.16 and resolved["run_dir"] == f"{tmp_path}/run"


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
    from dcpo_mcore.cli.convert import main

    assert main(["hf-to-mcore", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dcpo-convert: error: ") and "dcpo-convert hf-to-mcore --help" in err, err


class _Bug(RuntimeError):
    pass


@pytest.mark.parametrize("exc", [
    __import__("dcpo_mcore.data.records", fromlist=["DataError"]).DataError("row 7: prompt is empty"),
    FileNotFoundError(2, "No such file or directory", "/no/such/data.parquet"),
    __import__("dcpo_mcore.rollout.errors", fromlist=["ServerUnreachable"]).ServerUnreachable(
        "http://127.0.0.1:1", "connection refused", attempts=3),
])
def test_a_users_mistake_is_one_line_and_no_traceback(capsys, exc):
    from dcpo_mcore.cli import run_reporting_errors

    def work():
        raise exc

    assert run_reporting_errors("dcpo-train", work, Path("run/train.log")) == (False, None)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"dcpo-train: error: {type(exc).__name__}: "), err
    assert "Traceback" not in err


def test_a_bug_keeps_its_traceback_and_says_where_the_log_is(tmp_path):
    # A torch shape error is a RuntimeError like a CUDA OOM: neither is the user's fault.
    script = (
        "import logging, sys\n"
        "from pathlib import Path\n"
        "from dcpo_mcore.cli import run_reporting_errors\n"
        "from dcpo_mcore.cli.common import log_to_file\n"
        "import torch\n"
        f"log = log_to_file(Path({str(tmp_path / 'train.log')!r}))\n"
        "run_reporting_errors('dcpo-train', lambda: torch.ones(2, 3) @ torch.ones(2, 3), log)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "RuntimeError: mat1 and mat2" in proc.stderr
    assert f"dcpo-train: internal error RuntimeError (a bug; full traceback follows; the run's log is " \
           f"{tmp_path / 'train.log'})" in proc.stderr
    logged = (tmp_path / "train.log").read_text()
    assert "internal error" in logged and "mat1 and mat2" in logged  # the log has the traceback too


def test_every_room_error_is_a_user_error():
    from dcpo_mcore.checkpoint.errors import CheckpointError
    from dcpo_mcore.config import ConfigError
    from dcpo_mcore.convert.errors import ConvertError, RankCrash
    from dcpo_mcore.data.records import DataError
    from dcpo_mcore.engine.hf_arch import ArchError
    from dcpo_mcore.errors import UserError, is_user_error
    from dcpo_mcore.rollout.errors import RolloutError
    from dcpo_mcore.sync.errors import SyncError

    for cls in (CheckpointError, ConfigError, ConvertError, DataError, ArchError, RolloutError, SyncError):
        assert issubclass(cls, UserError), cls
    assert not is_user_error(RankCrash("rank 1 died")) and not is_user_error(_Bug("x"))
    assert not is_user_error(RuntimeError("CUDA out of memory")) and not is_user_error(ValueError("shape"))
