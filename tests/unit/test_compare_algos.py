"""tools/compare_algos.py's bookkeeping (dcpo_mcore/demo/experiments.py): what it reuses, and the numbers
it puts in the table."""
import importlib.util
from pathlib import Path

import pytest

from dcpo_mcore.config import load_config, save_resolved_config
from dcpo_mcore.demo import experiments
from dcpo_mcore.metrics import JsonlSink

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("compare_algos", REPO / "tools" / "compare_algos.py")
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def _fake_run(run_dir: Path, cfg, steps: int) -> None:
    save_resolved_config(cfg, run_dir)
    sink = JsonlSink(run_dir)
    # the trainer's keys for the demo's two held-out sets; the random split (written second here) counts
    sink.log(0, {"eval/synthetic_arith_balanced/avg@1": 0.20, "eval/synthetic_arith/avg@1": 0.40})
    for step in range(1, steps + 1):
        sink.log(step, {"clip/token_clip_ratio": 0.01 * step, "adv/nonzero_ratio": 0.5,
                        "rollout/generated_responses": 256.0 if step != 2 else 512.0, "timing/step_seconds": 3.0})
    sink.log(steps, {"eval/synthetic_arith_balanced/avg@1": 0.90, "eval/synthetic_arith/avg@1": 0.55})
    sink.close()


@pytest.fixture
def cfg(tmp_path):
    return load_config(REPO / "configs" / "demo_cpu.yaml", [f"run_dir={tmp_path / 'dcpo'}", "steps=3"])


def test_a_finished_run_with_the_same_settings_is_reused(tmp_path, cfg):
    _fake_run(tmp_path / "dcpo", cfg, 3)
    assert experiments.finished(tmp_path / "dcpo", 3, cfg)
    assert not experiments.finished(tmp_path / "dcpo", 4, cfg)  # not yet at the asked length
    assert not experiments.finished(tmp_path / "nothing", 3, cfg)


def test_a_run_made_with_other_settings_is_not_reused(tmp_path, cfg, capsys):
    _fake_run(tmp_path / "dcpo", cfg, 3)
    other = load_config(REPO / "configs" / "demo_cpu.yaml", [f"run_dir={tmp_path / 'dcpo'}", "steps=3", "optim.lr=1e-4"])
    assert not experiments.finished(tmp_path / "dcpo", 3, other)
    assert "optim.lr" in capsys.readouterr().out


def test_summary_numbers_by_hand(tmp_path, cfg):
    _fake_run(tmp_path / "dcpo", cfg, 3)
    row = compare.summarise("dcpo", tmp_path / "dcpo")
    assert row["start_acc"] == 0.40 and row["end_acc"] == 0.55 and row["best_acc"] == 0.55
    assert row["tcr_mean"] == pytest.approx((0.01 + 0.02 + 0.03) / 3) and row["rur_mean"] == 0.5
    assert row["responses"] == 256 + 512 + 256 and row["steps"] == 3
    assert row["step_minutes"] == pytest.approx(9.0 / 60) and row["wall_minutes"] is None
    (tmp_path / "dcpo" / experiments.WALL_FILE).write_text('{"seconds": 120.0}')
    assert compare.summarise("dcpo", tmp_path / "dcpo")["wall_minutes"] == 2.0
    # a run finished by a second process after a stop: the last process's time is not the run's
    (tmp_path / "dcpo" / experiments.WALL_FILE).write_text('{"seconds": 120.0, "resumed": true}')
    assert compare.summarise("dcpo", tmp_path / "dcpo")["wall_minutes"] is None
    table = compare.format_table([row], type("Args", (), {"seed": 2, "steps": 3})(), 0.415)
    assert "| dcpo | 40.0% | 55.0% | 55.0% | 0.02000 | 0.500 | 1024 | 0.1 | - |" in table
