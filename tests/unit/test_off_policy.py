"""Truncated importance weights (docs/algorithm.md [tis]) by hand, and their effect on the loss."""
import math

import pytest
import torch

from dcpo_mcore.algo import (DcpoClipParams, GlobalCounts, LossSpec, merge_tis_stats, policy_loss,
                             truncated_importance_weights)
from dcpo_mcore.engine.batching import BatchSettings, PolicySample, build_microbatch
from dcpo_mcore.trainer.update_stage import _apply_tis


def test_weights_and_statistics_by_hand():
    old = torch.log(torch.tensor([0.5, 0.2, 0.9, 0.3]))
    behaviour = torch.log(torch.tensor([0.25, 0.4, 0.3, 0.3]))
    # raw ratios 2.0, 0.5, 3.0, 1.0 -> capped at 2.5: 2.0, 0.5, 2.5, 1.0
    w, stats = truncated_importance_weights(old, behaviour, cap=2.5)
    assert torch.allclose(w, torch.tensor([2.0, 0.5, 2.5, 1.0]), atol=1e-6)
    assert stats.tokens == 4 and stats.truncated == 1
    assert stats.weight_mean == pytest.approx(6.0 / 4)
    assert stats.truncated_fraction == pytest.approx(0.25)


def test_a_token_without_a_sampler_logprob_weighs_one_and_is_not_counted():
    old = torch.log(torch.tensor([0.5, 0.5]))
    w, stats = truncated_importance_weights(old, torch.tensor([math.log(0.25), float("nan")]), cap=10.0)
    assert w.tolist() == pytest.approx([2.0, 1.0])
    assert stats.tokens == 1 and stats.weight_mean == pytest.approx(2.0)
    _, none = truncated_importance_weights(old, torch.tensor([float("nan")] * 2), cap=2.0)
    assert none.tokens == 0 and math.isnan(none.weight_mean) and math.isnan(none.truncated_fraction)


def test_a_cap_below_one_and_a_shape_mismatch_are_refused():
    with pytest.raises(ValueError, match="cap must be >= 1"):
        truncated_importance_weights(torch.zeros(2), torch.zeros(2), cap=0.5)
    with pytest.raises(ValueError, match="differ"):
        truncated_importance_weights(torch.zeros(2), torch.zeros(3), cap=2.0)


def test_merged_statistics_are_token_weighted():
    _, a = truncated_importance_weights(torch.zeros(3), torch.zeros(3), cap=2.0)  # 3 tokens of weight 1
    _, b = truncated_importance_weights(torch.tensor([0.0]), torch.tensor([-5.0]), cap=2.0)  # 1 token, capped 2
    m = merge_tis_stats([a, b])
    assert (m.tokens, m.truncated) == (4, 1) and m.weight_mean == pytest.approx(5.0 / 4)


def test_weights_scale_each_tokens_policy_gradient_and_not_the_kl():
    gen = torch.Generator().manual_seed(0)
    lp = (torch.randn(2, 3, generator=gen) - 1.0).requires_grad_()
    old = lp.detach() + 0.01 * torch.randn(2, 3, generator=gen)
    adv = torch.tensor([1.0, -0.5])
    mask = torch.ones(2, 3, dtype=torch.bool)
    counts = GlobalCounts(prompts=1.0, responses=2.0, tokens=6.0)
    w = torch.tensor([[2.0, 1.0, 0.5], [1.0, 1.0, 3.0]])
    spec = LossSpec("dcpo", DcpoClipParams(), "token_sum")
    plain = policy_loss(spec, lp, old, adv, mask, counts)
    (g_plain,) = torch.autograd.grad(plain.loss, lp)
    weighted = policy_loss(spec, lp, old, adv, mask, counts, token_weights=w)
    (g_weighted,) = torch.autograd.grad(weighted.loss, lp)
    # token_sum: each token's term is independent, so the gradient is scaled token by token
    assert torch.allclose(g_weighted, g_plain * w, atol=1e-6)
    assert torch.equal(plain.clip.as_tensor(), weighted.clip.as_tensor())  # clipping is the ratio's, unchanged
    ref = lp.detach() - 0.1
    kl_spec = LossSpec("dcpo", DcpoClipParams(), "token_sum", kl_coef=0.5)
    kl_w = policy_loss(kl_spec, lp, old, adv, mask, counts, ref_logprobs=ref, token_weights=w)
    kl_1 = policy_loss(kl_spec, lp, old, adv, mask, counts, ref_logprobs=ref)
    assert torch.equal(kl_w.kl, kl_1.kl)


def test_the_update_stage_sets_weights_per_sample_and_reports_their_statistics():
    samples = [PolicySample([1, 2], [3, 4], old_logprobs=torch.log(torch.tensor([0.5, 0.5]))),
               PolicySample([1], [5], old_logprobs=torch.log(torch.tensor([0.9])))]
    sampler = [[math.log(0.25), math.log(0.5)], [math.log(0.3)]]  # raw 2, 1, 3
    m = _apply_tis(samples, sampler, cap=2.0)
    assert samples[0].token_weights.tolist() == pytest.approx([2.0, 1.0])
    assert samples[1].token_weights.tolist() == pytest.approx([2.0])
    assert m == pytest.approx({"mismatch/tis_weight_mean": 5.0 / 3, "mismatch/tis_truncated_fraction": 1 / 3})
    mb = build_microbatch(samples, [0, 1], BatchSettings())
    assert torch.allclose(mb.token_weights, torch.tensor([[2.0, 1.0], [2.0, 0.0]]))
