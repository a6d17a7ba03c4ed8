"""Dynamic clip bounds and token objectives: hand-computed values (docs/algorithm.md [dac-bounds] table) and
references."""
import math

import pytest
import torch

from dcpo_mcore.algo import (
    DcpoClipParams,
    GspoParams,
    PpoClipParams,
    dcpo_token_loss,
    dcpo_token_objective,
    dynamic_clip_bounds,
    low_var_kl,
    token_objective,
)

# (q, lower, upper) for eps = (0.16, 0.2) and (0.2, 0.28), from docs/algorithm.md [dac-bounds] (3 decimals there).
TABLE_016_020 = [(1.0, 0.800, 1.171), (0.9, 0.769, 1.187), (0.5, 0.5, 1.306), (0.1, 0.5, 2.000),
                 (0.01, 0.5, 5.000), (0.002, 0.5, 10.0), (1e-4, 0.5, 10.0)]
TABLE_020_028 = [(1.0, 0.724, 1.228), (0.9, 0.667, 1.249), (0.5, 0.5, 1.400), (0.1, 0.5, 2.246),
                 (0.01, 0.5, 5.815), (0.002, 0.5, 10.0)]


@pytest.mark.parametrize("eps,table", [((0.16, 0.2), TABLE_016_020), ((0.2, 0.28), TABLE_020_028)])
def test_bounds_match_spec_table(eps, table):
    q = torch.tensor([row[0] for row in table], dtype=torch.float64)
    lower, upper = dynamic_clip_bounds(q.log(), *eps, ratio_cap=10.0)
    assert torch.allclose(lower, torch.tensor([r[1] for r in table], dtype=torch.float64), atol=5e-4)
    assert torch.allclose(upper, torch.tensor([r[2] for r in table], dtype=torch.float64), atol=5e-4)


def test_bounds_exact_closed_forms():
    # q = 1: l = 0.5 + 0.5*sqrt(1 - 0.64) = 0.8 exactly; h = 0.5 + 0.5*sqrt(1.8).
    lo, hi = dynamic_clip_bounds(torch.zeros(1, dtype=torch.float64))
    assert lo.item() == pytest.approx(0.8, abs=1e-15)
    assert hi.item() == pytest.approx(0.5 + 0.5 * math.sqrt(1.8), abs=1e-15)
    # q = 0.1: h = 0.5 + 0.5*sqrt(1 + 8) = 2 exactly; q = 0.01: h = 0.5 + 0.5*9 = 5.
    _, hi = dynamic_clip_bounds(torch.tensor([0.1, 0.01], dtype=torch.float64).log())
    assert hi.tolist() == pytest.approx([2.0, 5.0], abs=1e-12)
    # The cap starts at q <= eps_high/90 (docs/algorithm.md [dac-bounds]): just above it h < 10, at it h == 10.
    edge = 0.2 / 90
    _, hi = dynamic_clip_bounds(torch.tensor([edge * 1.01, edge], dtype=torch.float64).log())
    assert hi[0] < 10.0 and hi[1] == pytest.approx(10.0, abs=1e-9)


def test_bounds_underflowed_probability_keeps_lower_half():
    # docs/algorithm.md [choice-q-floor]: q == 0 (logprob -inf or a huge negative) must give l = 0.5, not 1,
    # and a finite capped upper bound.
    lo, hi = dynamic_clip_bounds(torch.tensor([-float("inf"), -1e4]))
    assert lo.tolist() == [0.5, 0.5] and hi.tolist() == [10.0, 10.0]
    lo, hi = dynamic_clip_bounds(torch.tensor([-200.0], dtype=torch.float16))
    assert torch.isfinite(lo).all() and lo.item() == 0.5 and hi.item() == 10.0


def test_ratio_cap_is_used_for_upper_bound():
    _, hi = dynamic_clip_bounds(torch.tensor([math.log(1e-6)]), ratio_cap=4.0)
    assert hi.item() == 4.0


def _loss_and_grad(logp, oldlogp, adv):
    logp = torch.tensor([logp], dtype=torch.float64, requires_grad=True)
    loss = dcpo_token_loss(logp, torch.tensor([oldlogp], dtype=torch.float64), torch.tensor([adv], dtype=torch.float64))
    loss.sum().backward()
    return loss.item(), logp.grad.item()


def test_dcpo_token_loss_hand_values_at_q1():
    h = 0.5 + 0.5 * math.sqrt(1.8)
    # A > 0, r = 1.1 inside: psi = A*r, d(-psi)/dlogp = -A*r.
    loss, grad = _loss_and_grad(math.log(1.1), 0.0, 1.0)
    assert loss == pytest.approx(-1.1) and grad == pytest.approx(-1.1)
    # A > 0, r = 1.5 > h: held at A*h, no gradient.
    loss, grad = _loss_and_grad(math.log(1.5), 0.0, 2.0)
    assert loss == pytest.approx(-2.0 * h) and grad == 0.0
    # A > 0, r = 0.5 < l: PPO does not clip from below for A > 0; gradient flows.
    loss, grad = _loss_and_grad(math.log(0.5), 0.0, 1.0)
    assert loss == pytest.approx(-0.5) and grad == pytest.approx(-0.5)
    # A < 0, r = 0.5 < l = 0.8: psi = A*l, no gradient.
    loss, grad = _loss_and_grad(math.log(0.5), 0.0, -1.0)
    assert loss == pytest.approx(0.8) and grad == 0.0
    # A < 0, r = 1.5 (above h, below c): gradient flows, psi = A*r.
    loss, grad = _loss_and_grad(math.log(1.5), 0.0, -1.0)
    assert loss == pytest.approx(1.5) and grad == pytest.approx(1.5)
    # A < 0, r = 12 > c = 10: dual clip at A*10, no gradient.
    loss, grad = _loss_and_grad(math.log(12.0), 0.0, -0.5)
    assert loss == pytest.approx(5.0) and grad == 0.0


def test_dcpo_token_loss_low_probability_token_gets_wide_bound():
    # q = 0.01: h = 5, so r = 4 (a 4x jump of a rare token) is NOT clipped for A > 0; fixed-0.2 PPO would clip.
    loss, grad = _loss_and_grad(math.log(0.04), math.log(0.01), 1.0)
    assert loss == pytest.approx(-4.0) and grad == pytest.approx(-4.0)


def test_log_ratio_clamp_keeps_zero_advantage_finite():
    # docs/algorithm.md [choice-logratio-clamp]: logp - oldlogp = 1000 would overflow exp; with A = 0 the loss
    # must be exactly 0, not NaN.
    logp = torch.tensor([1000.0, -1000.0], requires_grad=True)
    loss = dcpo_token_loss(logp, torch.zeros(2), torch.zeros(2))
    loss.sum().backward()
    assert loss.tolist() == [0.0, 0.0] and torch.isfinite(logp.grad).all()


def _closed_form_reference(logp, oldlogp, adv, eps_low=0.16, eps_high=0.2, cap=10.0):
    """Element-by-element loop of the closed form in docs/algorithm.md [dac-objective].

    A>=0: A*min(r,h); A<0: A*min(max(r,l),c).
    """
    out = []
    for lp, olp, a in zip(logp, oldlogp, adv):
        q = max(math.exp(olp.item()), 1e-30)
        lo = 0.5 + 0.5 * math.sqrt(max(1 - 4 * eps_low / q, 0.0))
        hi = min(0.5 + 0.5 * math.sqrt(1 + 4 * eps_high / q), cap)
        r = torch.exp(torch.clamp(lp - olp, -20, 20))
        psi = a * torch.clamp(r, max=hi) if a >= 0 else a * torch.clamp(torch.clamp(r, min=lo), max=cap)
        out.append(-psi)
    return torch.stack(out)


def test_dcpo_token_loss_matches_loop_reference_values_and_grads():
    g = torch.Generator().manual_seed(0)
    n = 400
    oldlogp = -torch.rand(n, generator=g, dtype=torch.float64) * 8
    logp0 = oldlogp + torch.randn(n, generator=g, dtype=torch.float64) * 0.7
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    adv[::7] = 0.0
    logp0[::11] = oldlogp[::11] + 3.0  # r ~ 20 > c: reaches the dual clip for the negative advantages there
    a = logp0.clone().requires_grad_(True)
    b = logp0.clone().requires_grad_(True)
    ours = dcpo_token_loss(a, oldlogp, adv)
    ref = _closed_form_reference(b, oldlogp, adv)
    ours.sum().backward()
    ref.sum().backward()
    assert torch.allclose(ours, ref, atol=1e-12)
    assert torch.allclose(a.grad, b.grad, atol=1e-12)
    # The random draw must exercise every branch, otherwise this test proves little.
    out = dcpo_token_objective(logp0, oldlogp, adv)
    assert out.is_clipped_low.any() and out.is_clipped_high.any() and out.is_dual_clipped.any()


def test_per_response_advantages_broadcast_over_tokens():
    logp = torch.log(torch.tensor([[1.1, 0.9], [1.05, 1.0]]))
    per_resp = dcpo_token_loss(logp, torch.zeros(2, 2), torch.tensor([1.0, -2.0]))
    per_tok = dcpo_token_loss(logp, torch.zeros(2, 2), torch.tensor([[1.0, 1.0], [-2.0, -2.0]]))
    assert torch.equal(per_resp, per_tok)


def test_clip_indicators_follow_spec_definition():
    # q = 1 everywhere: l = 0.8, h ~ 1.171, c = 10.
    r = torch.tensor([1.5, 0.5, 0.5, 1.5, 12.0, 1.0])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 0.0])
    out = dcpo_token_objective(r.log(), torch.zeros(6), adv)
    assert out.is_clipped_high.tolist() == [True, False, False, False, False, False]
    assert out.is_clipped_low.tolist() == [False, True, False, False, False, False]
    assert out.is_dual_clipped.tolist() == [False, False, False, False, True, False]


def test_grpo_and_dapo_fixed_clip():
    r = torch.tensor([1.3, 0.7, 1.25, 20.0])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    grpo = token_objective("ppo_clip", r.log(), torch.zeros(4), adv, None, PpoClipParams(0.2, 0.2, None))
    assert grpo.loss.tolist() == pytest.approx([-1.2, 0.8, -1.2, 20.0])  # no dual clip for GRPO
    dapo = token_objective("ppo_clip", r.log(), torch.zeros(4), adv, None, PpoClipParams(0.2, 0.28, 10.0))
    assert dapo.loss.tolist() == pytest.approx([-1.28, 0.8, -1.25, 10.0])  # dual clip holds A<0 at A*10


def test_objective_params_type_is_checked():
    with pytest.raises(TypeError, match="DcpoClipParams"):
        token_objective("dcpo", torch.zeros(1), torch.zeros(1), torch.zeros(1), None, PpoClipParams())


def test_gspo_ratio_is_per_sequence_not_per_batch():
    # docs/algorithm.md [choice-gspo-per-sequence]: two sequences with different mean log-ratios must get
    # different sequence ratios.
    old = torch.zeros(2, 3, dtype=torch.float64)
    logp = torch.tensor([[0.1, 0.1, 9.0], [-0.2, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    out = token_objective("gspo", logp, old, adv, mask, GspoParams(eps_low=0.5, eps_high=0.5))
    s1, s2 = math.exp(0.1), math.exp(-0.2 / 3)  # the masked token (9.0) must not enter sequence 1's mean
    assert out.loss[0, :2].tolist() == pytest.approx([-s1, -s1])
    assert out.loss[1].tolist() == pytest.approx([s2, s2, s2])
    # Token-level gradient of A * s_{i,t} is A * s_i per token (stop-gradient on s_i).
    (out.loss * mask).sum().backward()
    assert logp.grad[0, :2].tolist() == pytest.approx([-s1, -s1])
    assert logp.grad[1].tolist() == pytest.approx([s2, s2, s2])


def test_gspo_clip_is_on_sequence_ratio():
    old = torch.zeros(1, 2)
    logp = torch.full((1, 2), 0.01)  # s = e^0.01 ~ 1.01005 > 1 + 4e-4
    out = token_objective("gspo", logp, old, torch.tensor([1.0]), torch.ones(1, 2), GspoParams())
    assert out.loss[0].tolist() == pytest.approx([-(1 + 4e-4)] * 2)
    assert out.is_clipped_high.all()


def test_gspo_sequence_outside_the_log_ratio_clamp_gets_no_gradient():
    # docs/algorithm.md [gspo]: as in the authors' loss, the clamp (<= 10) blocks the gradient. Sequence 1
    # has mean log-ratio 12 and A < 0: unclipped by the surrogate (min picks r * A), so only the clamp
    # stops a push of weight e^10; sequence 2 (mean log-ratio 1, A < 0) keeps its gradient A * e^1.
    old = torch.zeros(2, 2, dtype=torch.float64)
    logp = torch.tensor([[12.0, 12.0], [1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([-1.0, -1.0], dtype=torch.float64)
    out = token_objective("gspo", logp, old, adv, torch.ones(2, 2), GspoParams())
    assert out.loss[0].tolist() == pytest.approx([math.exp(10.0)] * 2)  # the value is clamped too
    out.loss.sum().backward()
    assert logp.grad[0].tolist() == [0.0, 0.0]
    assert logp.grad[1].tolist() == pytest.approx([math.e, math.e])


def test_low_var_kl_hand_value():
    # d = ref - logp = 0.5: exp(0.5) - 0.5 - 1 = 0.1487212707
    kl = low_var_kl(torch.tensor([0.0]), torch.tensor([0.5]))
    assert kl.item() == pytest.approx(math.exp(0.5) - 1.5, abs=1e-7)
    assert low_var_kl(torch.tensor([0.0]), torch.tensor([50.0])).item() == 10.0  # clamped


def test_dppo_tv_masks_by_probability_change_not_ratio_hand_values():
    """docs/algorithm.md [dppo], delta 0.15 both ways. Per token: (q, p, A) -> masked?, d loss / d logp.
    A kept token's loss is -A*r, so its gradient in logp is -A*r; a masked token has none."""
    from dcpo_mcore.algo.objectives import DppoTvParams

    q = torch.tensor([[0.5, 0.5, 0.5, 0.5, 1e-4, 0.9]], dtype=torch.float64)
    p = torch.tensor([[0.6, 0.7, 0.4, 0.3, 1e-2, 0.6]], dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0, 1.0]], dtype=torch.float64)
    logp = p.log().requires_grad_(True)
    out = token_objective("dppo_tv", logp, q.log(), adv, torch.ones_like(q), DppoTvParams())
    out.loss.sum().backward()
    # 1: +0.1 up, kept (r 1.2). 2: +0.2 up with A > 0, masked. 3: -0.1 down, kept (r 0.8). 4: -0.2 down
    # with A < 0, masked. 5: a rare token grown 100x moved only +0.0099, kept (a ratio clip would stop
    # it). 6: A > 0 but p fell 0.3: the mask is one-sided, so kept (r 2/3).
    assert out.is_clipped_high.tolist() == [[False, True, False, False, False, False]]
    assert out.is_clipped_low.tolist() == [[False, False, False, True, False, False]]
    assert not out.is_dual_clipped.any()
    expected_grad = torch.tensor([[-1.2, 0.0, 0.8, 0.0, -100.0, -2 / 3]], dtype=torch.float64)
    assert torch.allclose(logp.grad, expected_grad, atol=1e-9), logp.grad
    # The value of every token, masked or not, is the plain surrogate -A*r.
    assert torch.allclose(out.loss.detach(), -(adv * p / q), atol=1e-9)
