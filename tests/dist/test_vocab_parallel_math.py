"""Single-process tests of the pure vocab-parallel math (dcpo_mcore.ops.logprob_math).

Hand-computed values for each helper, then a reference loop that simulates TP shards in one process
with the helpers and compares with ``torch.log_softmax`` on the whole vocabulary.
"""
import math

import pytest
import torch

from dcpo_mcore.ops import logprob_math as lm


def test_compute_dtype():
    assert lm.compute_dtype(torch.bfloat16) == torch.float32
    assert lm.compute_dtype(torch.float16) == torch.float32
    assert lm.compute_dtype(torch.float32) == torch.float32
    assert lm.compute_dtype(torch.float64) == torch.float64
    with pytest.raises(TypeError, match="floating-point"):
        lm.compute_dtype(torch.int64)


def test_shard_vocab_range():
    assert lm.shard_vocab_range(8, 0) == (0, 8)
    assert lm.shard_vocab_range(8, 3) == (24, 32)


def test_localize_targets_by_hand():
    local, in_shard = lm.localize_targets(torch.tensor([3, 4, 7, 8, 0]), vocab_start=4, v_local=4)
    assert local.tolist() == [0, 0, 3, 0, 0]  # off-shard targets clamped to a safe index
    assert in_shard.tolist() == [False, True, True, False, False]
    assert local.dtype == torch.int64


def test_target_logits_by_hand():
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    local, in_shard = lm.localize_targets(torch.tensor([5, 9, 4]), vocab_start=4, v_local=2)
    got = lm.target_logits(z, None, local, in_shard, 0.5, torch.float32)
    assert got.tolist() == [1.0, 0.0, 2.5]  # row 1's target (9) is on another shard
    rows = torch.tensor([2, 0])
    local, in_shard = lm.localize_targets(torch.tensor([4, 5]), vocab_start=4, v_local=2)
    assert lm.target_logits(z, rows, local, in_shard, 1.0, torch.float32).tolist() == [5.0, 2.0]


def test_chunk_softmax_stats_by_hand():
    # one row [0, ln 3]: mu = ln 3, s = 1/3 + 1 = 4/3, w = (1/3) * (-ln 3) + 1 * 0
    z = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    mu, s, w = lm.chunk_softmax_stats(z, 1.0, torch.empty(1, 2, dtype=torch.float64), True)
    assert mu.item() == pytest.approx(math.log(3.0), rel=1e-15)
    assert s.item() == pytest.approx(4.0 / 3.0, rel=1e-15)
    assert w.item() == pytest.approx(-math.log(3.0) / 3.0, rel=1e-15)
    # temperature 2 halves the scaled logits: u = [0, ln3/2], s = 3^-1/2 + 1
    mu, s, w = lm.chunk_softmax_stats(z, 0.5, torch.empty(1, 2, dtype=torch.float64), False)
    assert mu.item() == pytest.approx(math.log(3.0) / 2, rel=1e-15)
    assert s.item() == pytest.approx(3 ** -0.5 + 1, rel=1e-15)
    assert w is None


def test_all_neg_inf_shard_gives_zeros_not_nan():
    z = torch.full((2, 3), float("-inf"), dtype=torch.float64)
    mu, s, w = lm.chunk_softmax_stats(z, 1.0, torch.empty(2, 3, dtype=torch.float64), True)
    assert torch.isneginf(mu).all() and s.tolist() == [0.0, 0.0] and w.tolist() == [0.0, 0.0]
    s_g, w_g = lm.rescale_to_global_max(mu, torch.tensor([1.0, 2.0], dtype=torch.float64), s, w)
    assert s_g.tolist() == [0.0, 0.0] and w_g.tolist() == [0.0, 0.0]


def test_rescale_and_finalize_by_hand():
    # two shards of the row [0, ln 3 | ln 2]: M = ln 3, S = 1/3 + 1 + 2/3 = 2
    mu_a, mu_b, big_m = math.log(3.0), math.log(2.0), math.log(3.0)
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    s_a, w_a = lm.rescale_to_global_max(t(mu_a), t(big_m), t(4.0 / 3.0), t(-math.log(3.0) / 3.0))
    s_b, w_b = lm.rescale_to_global_max(t(mu_b), t(big_m), t(1.0), t(0.0))
    assert (s_a + s_b).item() == pytest.approx(2.0, rel=1e-15)
    lse, logprob, entropy = lm.finalize_logprobs(t(big_m), s_a + s_b, t(math.log(2.0)), w_a + w_b)
    p = torch.tensor([1 / 6, 1 / 2, 1 / 3], dtype=torch.float64)
    assert lse.item() == pytest.approx(math.log(6.0), rel=1e-15)
    assert logprob.item() == pytest.approx(math.log(1 / 3), rel=1e-14)
    assert entropy.item() == pytest.approx(float(-(p * p.log()).sum()), rel=1e-14)


def test_chunk_logprob_grad_by_hand():
    # p = softmax([0, ln 3]) = [1/4, 3/4]; target 0; grad = coef * (onehot - p)
    z = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    lse = torch.tensor([math.log(4.0)], dtype=torch.float64)
    local, in_shard = lm.localize_targets(torch.tensor([0]), 0, 2)
    out = torch.empty(1, 2, dtype=torch.float64)
    lm.chunk_logprob_grad(z, lse, local, in_shard, torch.tensor([2.0], dtype=torch.float64), 1.0,
                          torch.empty(1, 2, dtype=torch.float64), out)
    assert out.tolist()[0] == pytest.approx([2.0 * 0.75, -2.0 * 0.75], rel=1e-15)
    # off-shard target: only the -p part
    local, in_shard = lm.localize_targets(torch.tensor([5]), 0, 2)
    lm.chunk_logprob_grad(z, lse, local, in_shard, torch.tensor([1.0], dtype=torch.float64), 1.0,
                          torch.empty(1, 2, dtype=torch.float64), out)
    assert out.tolist()[0] == pytest.approx([-0.25, -0.75], rel=1e-15)


def test_chunk_logprob_grad_may_write_into_its_input():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    lse = torch.logsumexp(z * 0.5, -1)
    local, in_shard = lm.localize_targets(torch.tensor([0, 5, 2, 3]), 0, 6)
    coef = torch.randn(4, generator=gen, dtype=torch.float64)
    expected = lm.chunk_logprob_grad(z, lse, local, in_shard, coef, 0.5,
                                     torch.empty(4, 6, dtype=torch.float64), torch.empty(4, 6, dtype=torch.float64))
    aliased = z.clone()
    lm.chunk_logprob_grad(aliased, lse, local, in_shard, coef, 0.5, torch.empty(4, 6, dtype=torch.float64), out=aliased)
    torch.testing.assert_close(aliased, expected, rtol=0, atol=0)


@pytest.mark.parametrize("tp", [1, 2, 3, 4])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_simulated_shards_match_log_softmax(tp, temperature):
    """Reference loop: run the helpers shard by shard in one process, reduce by hand, compare."""
    gen = torch.Generator().manual_seed(tp)
    n, vocab = 11, 12 * 5
    z = torch.randn(n, vocab, generator=gen, dtype=torch.float64) * 4
    targets = torch.randint(0, vocab, (n,), generator=gen)
    v_local, inv_t = vocab // tp, 1.0 / temperature
    stats = []
    for r in range(tp):
        start, end = lm.shard_vocab_range(v_local, r)
        shard = z[:, start:end]
        local, in_shard = lm.localize_targets(targets, start, v_local)
        mu, s, w = lm.chunk_softmax_stats(shard, inv_t, torch.empty(n, v_local, dtype=torch.float64), True)
        stats.append((mu, s, w, lm.target_logits(shard, None, local, in_shard, inv_t, torch.float64)))
    big_m = torch.stack([st[0] for st in stats]).amax(0)  # the MAX all-reduce
    total_s = total_w = total_t = 0
    for mu, s, w, tl in stats:  # the SUM all-reduce
        s_g, w_g = lm.rescale_to_global_max(mu, big_m, s, w)
        total_s, total_w, total_t = total_s + s_g, total_w + w_g, total_t + tl
    lse, logprob, entropy = lm.finalize_logprobs(big_m, total_s, total_t, total_w)
    ref = torch.log_softmax(z / temperature, -1)
    torch.testing.assert_close(lse, torch.logsumexp(z / temperature, -1), rtol=1e-13, atol=0)
    torch.testing.assert_close(logprob, ref[torch.arange(n), targets], rtol=1e-13, atol=0)
    torch.testing.assert_close(entropy, -(ref.exp() * ref).sum(-1), rtol=1e-12, atol=0)
    # and the per-shard gradients assemble to the full-vocab gradient
    coef = torch.randn(n, generator=gen, dtype=torch.float64)
    grads = []
    for r in range(tp):
        start, end = lm.shard_vocab_range(v_local, r)
        local, in_shard = lm.localize_targets(targets, start, v_local)
        grads.append(lm.chunk_logprob_grad(z[:, start:end], lse, local, in_shard, coef * inv_t, inv_t,
                                           torch.empty(n, v_local, dtype=torch.float64),
                                           torch.empty(n, v_local, dtype=torch.float64)))
    x = z.clone().requires_grad_()
    (ref_grad,) = torch.autograd.grad(torch.log_softmax(x / temperature, -1)[torch.arange(n), targets], x, coef)
    torch.testing.assert_close(torch.cat(grads, 1), ref_grad, rtol=1e-12, atol=1e-15)
