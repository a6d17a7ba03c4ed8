"""The "nll" token objective: advantage-weighted log-likelihood, hand-computed values.

With advantage 1 and token_mean aggregation the policy loss is the mean next-token cross-entropy over
the response tokens (the demo's pretraining objective); old log-probs play no part and nothing is clipped.
"""
import math

import pytest
import torch

from dcpo_mcore.algo import OBJECTIVES, GlobalCounts, LossSpec, NllParams, nll_objective, policy_loss, token_objective

NLL = LossSpec(objective="nll", objective_params=NllParams(), aggregation="token_mean")


def test_registered_with_its_own_params():
    assert "nll" in OBJECTIVES
    assert OBJECTIVES.get("nll").params_type is NllParams
    lp = torch.zeros(1, 1)
    with pytest.raises(TypeError, match="takes NllParams"):
        token_objective("nll", lp, lp, torch.ones(1), torch.ones(1, 1, dtype=torch.bool), object())


def test_per_token_loss_is_minus_advantage_times_logprob():
    lp = torch.tensor([[math.log(0.5), math.log(0.25)], [math.log(0.1), 0.0]])
    old = torch.full_like(lp, -3.0)  # ignored
    adv = torch.tensor([1.0, -2.0])
    out = nll_objective(lp, old, adv, torch.ones(2, 2, dtype=torch.bool), NllParams())
    expected = torch.tensor([[math.log(2.0), math.log(4.0)], [2.0 * math.log(0.1), 0.0]])
    assert torch.allclose(out.loss, expected, atol=1e-6)
    # per-token advantages pass through
    out_tok = nll_objective(lp, old, torch.tensor([[1.0, 0.0], [3.0, 1.0]]), None, NllParams())
    assert torch.allclose(out_tok.loss, torch.tensor([[math.log(2.0), 0.0], [-3 * math.log(0.1), 0.0]]), atol=1e-6)


def test_old_logprobs_do_not_matter_and_nothing_is_clipped():
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(3, 4, generator=g) * 5
    adv = torch.tensor([1.0, -1.0, 0.5])
    mask = torch.ones(3, 4, dtype=torch.bool)
    a = nll_objective(lp, torch.zeros(3, 4), adv, mask, NllParams())
    b = nll_objective(lp, lp + 7.0, adv, mask, NllParams())  # a ratio of e^-7 would clip any PPO loss
    assert torch.equal(a.loss, b.loss)
    for out in (a, b):
        assert not out.is_clipped.any() and not out.is_dual_clipped.any()
        assert not out.is_clipped_low.any() and not out.is_clipped_high.any()


def test_token_mean_with_unit_advantage_is_cross_entropy():
    # Two responses of 2 and 1 tokens (second row padded); global token count 3.
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]], [[0.0, 3.0, 1.0], [9.0, 9.0, 9.0]]])
    targets = torch.tensor([[0, 2], [1, 0]])
    mask = torch.tensor([[True, True], [True, False]])
    lp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1).requires_grad_(True)
    counts = GlobalCounts(prompts=2.0, responses=2.0, tokens=3.0)
    out = policy_loss(NLL, lp, torch.zeros(2, 2), torch.ones(2), mask, counts)
    ce = torch.nn.functional.cross_entropy(logits[mask], targets[mask])  # mean over the 3 real tokens
    assert out.loss.item() == pytest.approx(ce.item(), abs=1e-6)
    # hand value: -(log softmax([2,0,-1])[0] + log softmax([.5,.5,0])[2] + log softmax([0,3,1])[1]) / 3
    hand = -(2 - math.log(math.e**2 + 1 + math.e**-1)
             + 0 - math.log(2 * math.e**0.5 + 1)
             + 3 - math.log(1 + math.e**3 + math.e)) / 3
    assert out.loss.item() == pytest.approx(hand, abs=1e-6)
    out.loss.backward()
    assert torch.allclose(lp.grad, torch.tensor([[-1 / 3, -1 / 3], [-1 / 3, 0.0]]))
    assert out.clip.clipped.item() == 0 and out.clip.tokens.item() == 3


def test_micro_batch_split_sums_to_the_full_batch():
    g = torch.Generator().manual_seed(1)
    lp = -torch.rand(4, 3, generator=g)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    counts = GlobalCounts(prompts=4.0, responses=4.0, tokens=float(mask.sum()))
    full = policy_loss(NLL, lp, torch.zeros(4, 3), torch.ones(4), mask, counts).loss
    parts = sum(policy_loss(NLL, lp[i:i + 2], torch.zeros(2, 3), torch.ones(2), mask[i:i + 2], counts).loss
                for i in (0, 2))
    assert parts.item() == pytest.approx(full.item(), abs=1e-7)
    assert full.item() == pytest.approx(-(lp * mask).sum().item() / 9, abs=1e-7)
