"""Aggregations against plain loops, and exact invariance of the gradient to micro-batch splits."""
import pytest
import torch

from dcpo_mcore.algo import (
    AGGREGATIONS,
    DcpoClipParams,
    GlobalCounts,
    LossSpec,
    aggregate,
    only_token_mean,
    policy_loss,
    seq_mean_token_mean,
    token_mean,
    token_sum,
)

VALUES = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 9.0, 9.0, 9.0]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])


def test_hand_values():
    # Row means 2 and 4; token sums 6 and 4; 4 tokens in total.
    assert only_token_mean(VALUES, MASK, num_prompts=2).item() == 3.0
    assert token_sum(VALUES, MASK, num_responses=2).item() == 5.0
    assert token_mean(VALUES, MASK, num_tokens=4).item() == 2.5
    assert seq_mean_token_mean(VALUES, MASK, num_responses=2).item() == 3.0


def test_otm_sums_responses_instead_of_averaging():
    # With G = 2 samples of one prompt, OTM = G x seq-mean-token-mean (docs/algorithm.md [otm-canonical]).
    assert only_token_mean(VALUES, MASK, 1).item() == 2 * seq_mean_token_mean(VALUES, MASK, 2).item()


def test_empty_rows_contribute_zero():
    mask = torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0]])
    assert only_token_mean(VALUES, mask, 1).item() == 6.5


def _loop_reference(name, values, mask, counts):
    total = 0.0
    for b in range(values.shape[0]):
        toks = [values[b, t].item() for t in range(values.shape[1]) if mask[b, t]]
        if name in ("otm", "seq_mean_token_mean"):
            total += sum(toks) / len(toks) if toks else 0.0
        else:
            total += sum(toks)
    denom = {"otm": counts.prompts, "seq_mean_token_mean": counts.responses,
             "token_sum": counts.responses, "token_mean": counts.tokens}[name]
    return total / denom


@pytest.mark.parametrize("name", AGGREGATIONS.names())
def test_aggregations_match_loop_on_random_inputs(name):
    g = torch.Generator().manual_seed(1)
    values = torch.randn(7, 11, generator=g, dtype=torch.float64)
    mask = torch.rand(7, 11, generator=g) > 0.4
    mask[3] = False
    counts = GlobalCounts(prompts=3.5, responses=7, tokens=float(mask.sum()))
    assert aggregate(name, values, mask, counts).item() == pytest.approx(_loop_reference(name, values, mask, counts), abs=1e-12)


def test_zero_global_count_is_an_error():
    with pytest.raises(ValueError, match="prompts"):
        aggregate("otm", VALUES, MASK, GlobalCounts(0, 2, 4))


def _random_batch(seed, b=10, t=9):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 5
    logp = old + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.5
    mask = torch.zeros(b, t, dtype=torch.bool)
    for i, n in enumerate(torch.randint(1, t + 1, (b,), generator=g).tolist()):
        mask[i, :n] = True
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    return logp, old, adv, mask


@pytest.mark.parametrize("aggregation", ["otm", "token_sum", "token_mean", "seq_mean_token_mean"])
def test_gradient_is_identical_for_any_micro_batch_split(aggregation):
    logp, old, adv, mask = _random_batch(seed=2)
    counts = GlobalCounts(prompts=10 / 5, responses=10, tokens=float(mask.sum()))
    spec = LossSpec("dcpo", DcpoClipParams(), aggregation)
    grads = {}
    for splits in (1, 2, 3, 5):
        theta = logp.clone().requires_grad_(True)
        total = torch.zeros((), dtype=torch.float64)
        for idx in torch.tensor_split(torch.arange(10), splits):
            out = policy_loss(spec, theta[idx], old[idx], adv[idx], mask[idx], counts)
            out.loss.backward()  # each micro-batch separately, summed, never averaged
            total += out.loss.detach()
        grads[splits] = (total, theta.grad.clone())
    for splits in (2, 3, 5):
        assert torch.allclose(grads[splits][0], grads[1][0], rtol=0, atol=1e-13)
        assert torch.allclose(grads[splits][1], grads[1][1], rtol=0, atol=1e-13)
    assert grads[1][1].abs().sum() > 0  # the loss really has a gradient


def test_first_epoch_ratio_is_one_and_nothing_is_clipped():
    logp, _, adv, mask = _random_batch(seed=3)
    out = policy_loss(LossSpec("dcpo", DcpoClipParams(), "otm"), logp, logp.clone(), adv, mask,
                      GlobalCounts(2, 10, float(mask.sum())))
    assert out.clip.clipped.item() == 0 and out.log_ratio_abs_max.item() == 0.0


def test_kl_term_needs_reference_and_adds_to_loss():
    logp, old, adv, mask = _random_batch(seed=4)
    counts = GlobalCounts(2, 10, float(mask.sum()))
    spec = LossSpec("dcpo", DcpoClipParams(), "otm", kl_coef=0.1)
    with pytest.raises(ValueError, match="reference"):
        policy_loss(spec, logp, old, adv, mask, counts)
    out = policy_loss(spec, logp, old, adv, mask, counts, ref_logprobs=old)
    assert out.kl is not None and out.kl.item() > 0
    assert out.loss.item() == pytest.approx(out.policy_loss.item() + 0.1 * out.kl.item(), abs=1e-12)
