"""The README's first command, shortened: `dcpo-demo` end to end (tokenizer + model -> task -> megatron
pretraining -> real SGLang + DCPO -> eval -> report), asserting that RL raises held-out greedy accuracy.

Shortened to 20 RL steps without the baseline (~6 min on 2 cores). Pretraining may take up to 1200 s
instead of the demo's 420: it normally stops at its 35% target in ~100 s, but on a busy machine the
420 s clock stopped it at 4% (a CI run while another demo pretrained beside it), and the assertions
below are about RL from a partly trained start, not about this machine's speed. The margin is against the same run's
pre-RL score and well below the measured gain (+12.5 points at step 20 of the default run, seed 1),
because two runs of the same seed sample differently and 200 questions vary by a few points
(docs/platform.md [demo-calibration]).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.integration.conftest import SKIP_REASON

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")]
REPO = Path(__file__).resolve().parents[2]
MIN_GAIN_POINTS = 5.0


@pytest.mark.timeout(1800)
def test_short_demo_learns(tmp_path):
    cmd = [sys.executable, "-c", "import sys; from dcpo_mcore.cli import demo_main; sys.exit(demo_main())",
           "--no-baseline", "--pretrain-max-seconds", "1200", f"run_dir={tmp_path}", "steps=20", "eval_interval=10", "eval_k=2", "checkpoint.save_interval=0"]
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True, timeout=1700)
        log.seek(0)
        out = log.read()
    assert proc.returncode == 0, out[-4000:]
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    assert summary["pretrain_steps"] > 0 and summary["steps"] == 20
    assert summary["rl_start_accuracy"] > 0.1, summary  # pretraining reached partial accuracy
    assert summary["rl_gain_points"] >= MIN_GAIN_POINTS, summary
    assert [s for s, _ in summary["eval_series"]] == [0, 10, 20]
    assert (tmp_path / "demo_summary.md").exists() and (tmp_path / "report" / "reward.png").exists()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "clip/token_clip_ratio" in r]
    assert len(train_rows) == 20 and all(r["invariant/first_update_ratio_is_one"] == 1.0 for r in train_rows)
    # eval_k=2: every evaluation also samples 2 responses per problem: Avg@2 over 200 problems is a
    # multiple of 1/400, beside the greedy Avg@1 (whose other metrics the sampled draw leaves alone).
    sampled = [(r["step"], r["eval/synthetic_arith/avg@2"]) for r in rows if "eval/synthetic_arith/avg@2" in r]
    assert [s for s, _ in sampled] == [0, 10, 20]
    assert all(0.0 <= v <= 1.0 and abs(v * 400 - round(v * 400)) < 1e-6 for _, v in sampled), sampled
    # The RL result leaves as an HF model (dcpo-convert mcore-to-hf on the run), and transformers' greedy
    # accuracy on it and on the pretrained model agrees with SGLang's in-training evaluations (greedy on both
    # engines; a near-tie can flip an argmax, hence a small tolerance rather than equality).
    assert (tmp_path / "model_rl" / "model.safetensors").exists() and summary["rl_policy_hf"].endswith("model_rl")
    kinds = summary["accuracy_by_kind"]
    assert set(kinds) == {"pretrained", "after_rl"}  # no baseline in this run
    assert abs(kinds["pretrained"]["all"] - summary["rl_start_accuracy"]) <= 0.03, (kinds, summary)
    assert abs(kinds["after_rl"]["all"] - summary["rl_end_accuracy"]) <= 0.03, (kinds, summary)
    for k in kinds.values():  # the held-out set is a random split: mostly sums, like the training set
        n_add, n_mul = k["n_addition"], k["n_multiplication"]
        assert n_add + n_mul == 200 and 0 < n_mul < 50
        assert k["all"] == pytest.approx((k["addition"] * n_add + k["multiplication"] * n_mul) / 200)
    # the second, half-product held-out set is evaluated in training and reported beside it
    balanced = summary["accuracy_by_kind_balanced"]
    assert set(balanced) == {"pretrained", "after_rl"}
    assert all(k["n_addition"] == k["n_multiplication"] == 100 for k in balanced.values())
    assert [s for s, _ in summary["eval_series_balanced"]] == [0, 10, 20]
    assert abs(balanced["pretrained"]["all"] - summary["eval_series_balanced"][0][1]) <= 0.03, (balanced, summary)
    summary_md = (tmp_path / "demo_summary.md").read_text()
    assert "by kind of question" in summary_md and "half products" in summary_md
