"""The step's metrics from its optimizer steps: TCR as paper Eq. 9 (plain mean over every micro-batch
of the step) and the token-weighted fraction under its own key, by hand and against clip_ratios."""
import math

import pytest
import torch

from dcpo_mcore.algo import clip_ratios
from dcpo_mcore.trainer.update_stage import _update_metrics


def _optimizer_step(per_micro: torch.Tensor) -> dict[str, float]:
    """What the engine reports for one optimizer step whose micro-batches have these counts [M, 5]."""
    c = clip_ratios(per_micro)
    return {"clip/token_clip_ratio": float(c["token_clip_ratio"]), "clip/low_ratio": float(c["low_ratio"]),
            "clip/high_ratio": float(c["high_ratio"]), "clip/dual_ratio": float(c["dual_ratio"]),
            "clip/token_clip_ratio_global": float(c["token_clip_ratio_global"]),
            "clip/micro_batches": float(c["micro_batches"]), "perf/response_tokens": float(per_micro[:, 4].sum()),
            "actor/entropy": 1.0, "actor/ppo_kl": 0.0, "loss/policy": 0.0, "loss/total": 0.0, "loss/kl": 0.0,
            "loss/grad_norm": 1.0, "optim/lr": 1e-6, "optim/skipped": 0.0, "loss/log_ratio_abs_max": 0.0}


# rows: clipped, clipped_low, clipped_high, dual_clipped, tokens
STEP_A = torch.tensor([[3., 1., 2., 0., 5.], [2., 2., 0., 0., 5.]])  # fractions 0.6 and 0.4; 10 tokens
STEP_B = torch.tensor([[6., 0., 6., 1., 30.], [0., 0., 0., 0., 0.]])  # 0.2, and an empty micro-batch


def test_tcr_is_the_plain_mean_over_micro_batches_and_the_token_weighted_one_has_its_own_key():
    out = _update_metrics([_optimizer_step(STEP_A), _optimizer_step(STEP_B)])
    assert out["clip/token_clip_ratio"] == pytest.approx((0.6 + 0.4 + 0.2) / 3)  # Eq. 9: 3 non-empty micro-batches
    assert out["clip/token_clip_ratio_global"] == pytest.approx((3 + 2 + 6) / 40)  # tokens: 11 of 40
    assert out["clip/high_ratio"] == pytest.approx((0.4 + 0.0 + 0.2) / 3)
    assert out["clip/dual_ratio"] == pytest.approx((0 + 0 + 1 / 30) / 3)


def test_the_step_tcr_equals_clip_ratios_over_all_micro_batches_at_once():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        steps = []
        for _ in range(int(torch.randint(1, 5, (1,), generator=gen))):
            m = int(torch.randint(1, 4, (1,), generator=gen))
            tokens = torch.randint(0, 50, (m, 1), generator=gen).to(torch.float64)
            parts = (torch.rand(m, 4, generator=gen, dtype=torch.float64) * tokens).floor()
            steps.append(torch.cat([parts, tokens], 1))
        whole = clip_ratios(torch.cat(steps))
        out = _update_metrics([_optimizer_step(s) for s in steps])
        for key in ("token_clip_ratio", "low_ratio", "high_ratio", "dual_ratio", "token_clip_ratio_global"):
            ref = float(whole[key])
            assert (math.isnan(ref) and math.isnan(out[f"clip/{key}"])) or out[f"clip/{key}"] == pytest.approx(ref)


def test_mismatch_bound_is_the_configured_one():
    from types import SimpleNamespace

    from dcpo_mcore.config import load_config
    from dcpo_mcore.trainer.update_stage import _mismatch_metrics

    batch = SimpleNamespace(sampler_logprobs=[[-1.0, -2.0], [-0.5]])
    trainer = [torch.tensor([-1.1, -2.1]), torch.tensor([-0.6])]  # |diff| 0.1 everywhere
    bound = load_config("configs/tiny_test.yaml", ["rollout.mismatch_bound=0.2"]).rollout.mismatch_bound
    assert _mismatch_metrics(batch, trainer, bound)["invariant/mismatch_within_bound"] == 1.0
    assert _mismatch_metrics(batch, trainer, 0.05)["invariant/mismatch_within_bound"] == 0.0
    assert _mismatch_metrics(batch, trainer, 0.05)["mismatch/logprob_abs_mean"] == pytest.approx(0.1, abs=1e-6)
    off_policy = _mismatch_metrics(batch, trainer, None)  # a batch generated ahead: reported, not checked
    assert "invariant/mismatch_within_bound" not in off_policy
    assert off_policy["mismatch/logprob_abs_mean"] == pytest.approx(0.1, abs=1e-6)
