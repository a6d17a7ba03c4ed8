"""The README's first command, shortened: `dcpo-demo` end to end (tokenizer + model -> task -> megatron
pretraining -> real SGLang + DCPO -> eval -> report), asserting that RL raises held-out greedy accuracy.

Shortened to 30 RL steps without the baseline (~5 min on 2 cores). Pretraining may take up to 1200 s
instead of the demo's 420: it normally stops at its 35% target in ~100 s, but on a busy machine the
420 s clock stopped it at 4% (a CI run while another demo pretrained beside it), and the assertions
below are about RL from a partly trained start, not about this machine's speed.

The learning assertion is on the mean of the held-out evaluations at steps 20, 25 and 30 against the
same run's pre-RL score, not on step 20 alone. Two runs of one seed sample differently (CPU SGLang
ignores sampling seeds) and a 20-step trajectory swings: one CI run went 36.5% -> 47.0% at step 10 ->
40.0% at step 20, so "step 20 >= start + 5" failed (+3.5) while the run clearly learned (+10.5 at step
10); another gave +12.5 at step 20. Ten more steps and the mean of three late evaluations keep the
test able to fail (no update, or a sign error, gives <= 0) without betting on one point of a noisy curve
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
MIN_GAIN_POINTS = 5.0  # mean of the LATE_STEPS evaluations over the start, in points
LATE_STEPS = (20, 25, 30)


@pytest.mark.timeout(1800)
def test_short_demo_learns(tmp_path):
    cmd = [sys.executable, "-c", "import sys; from dcpo_mcore.cli import demo_main; sys.exit(demo_main())",
           "--no-baseline", "--pretrain-max-seconds", "1200", f"run_dir={tmp_path}", "steps=30", "eval_interval=5", "eval_k=2", "checkpoint.save_interval=0"]
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True, timeout=1700)
        log.seek(0)
        out = log.read()
    assert proc.returncode == 0, out[-4000:]
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    assert summary["pretrain_steps"] > 0 and summary["steps"] == 30
    assert summary["rl_start_accuracy"] > 0.1, summary  # pretraining reached partial accuracy
    series = dict(summary["eval_series"])
    assert sorted(series) == [0, 5, 10, 15, 20, 25, 30], summary
    late_gain = 100 * (sum(series[s] for s in LATE_STEPS) / len(LATE_STEPS) - summary["rl_start_accuracy"])
    assert late_gain >= MIN_GAIN_POINTS, (late_gain, summary)
    assert (tmp_path / "demo_summary.md").exists() and (tmp_path / "report" / "reward.png").exists()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "clip/token_clip_ratio" in r]
    assert len(train_rows) == 30 and all(r["invariant/first_update_ratio_is_one"] == 1.0 for r in train_rows)
    # eval_k=2: every evaluation also samples 2 responses per problem: Avg@2 over 200 problems is a
    # multiple of 1/400, beside the greedy Avg@1 (whose other metrics the sampled draw leaves alone).
    sampled = [(r["step"], r["eval/synthetic_arith/avg@2"]) for r in rows if "eval/synthetic_arith/avg@2" in r]
    assert [s for s, _ in sampled] == [0, 5, 10, 15, 20, 25, 30]
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
    assert [s for s, _ in summary["eval_series_balanced"]] == [0, 5, 10, 15, 20, 25, 30]
    assert abs(balanced["pretrained"]["all"] - summary["eval_series_balanced"][0][1]) <= 0.03, (balanced, summary)
    summary_md = (tmp_path / "demo_summary.md").read_text()
    assert "by kind of question" in summary_md and "half products" in summary_md
