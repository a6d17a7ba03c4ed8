"""Single-process (tp_group=None) tests of vocab_parallel_logprobs: argument checks, the in-place
backward contract (misuse is loud, the documented safe patterns are exact) and the memory bound."""
import pytest
import torch

from dcpo_mcore.ops import vocab_parallel_logprobs

T, V = 8, 16


def _data(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(T, V, generator=gen, dtype=dtype) * 2, torch.randint(0, V, (T,), generator=gen)


def _ref_logprobs(x, targets, temperature=1.0):
    return torch.log_softmax(x / temperature, -1)[torch.arange(x.shape[0]), targets]


# ---------------------------------------------------------------- arguments


def test_bad_arguments_say_what_is_wrong():
    x, tg = _data()
    with pytest.raises(ValueError, match=r"\[T, V/TP\]"):
        vocab_parallel_logprobs(x.view(2, 4, V), tg)
    with pytest.raises(ValueError, match="targets must have shape"):
        vocab_parallel_logprobs(x, tg[:-1])
    with pytest.raises(TypeError, match="integer token ids"):
        vocab_parallel_logprobs(x, tg.double())
    with pytest.raises(ValueError, match="temperature"):
        vocab_parallel_logprobs(x, tg, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        vocab_parallel_logprobs(x, tg, chunk_size=0)
    with pytest.raises(ValueError, match="bool positions mask"):
        vocab_parallel_logprobs(x, tg, positions=torch.ones(T - 1, dtype=torch.bool))
    with pytest.raises(TypeError, match="positions must be"):
        vocab_parallel_logprobs(x, tg, positions=torch.tensor([0.0, 1.0]))


def test_duplicate_positions_raise_when_a_gradient_is_needed():
    x, tg = _data()
    logits = x.clone().requires_grad_() * 1
    with pytest.raises(RuntimeError, match="duplicate row indices"):
        vocab_parallel_logprobs(logits, tg, positions=torch.tensor([3, 1, 3]))


def test_no_grad_forward_and_single_output():
    x, tg = _data()
    with torch.no_grad():
        lp = vocab_parallel_logprobs(x, tg, temperature=0.8, chunk_size=3)
    assert isinstance(lp, torch.Tensor) and not lp.requires_grad
    torch.testing.assert_close(lp, _ref_logprobs(x, tg, 0.8), rtol=1e-13, atol=0)
    assert not x.requires_grad  # untouched input


def test_bf16_logits_give_fp32_outputs_and_bf16_gradient():
    x, tg = _data(torch.float32)
    logits = x.bfloat16().requires_grad_() * 1
    lp, ent = vocab_parallel_logprobs(logits, tg, return_entropy=True, positions=torch.tensor([1, 5]))
    assert lp.dtype == ent.dtype == torch.float32
    (grad,) = torch.autograd.grad(lp.sum(), logits)
    assert grad.dtype == torch.bfloat16 and grad.shape == logits.shape
    assert grad[[0, 2, 3, 4, 6, 7]].abs().sum() == 0  # rows not asked for


def test_empty_positions():
    x, tg = _data()
    logits = x.clone().requires_grad_() * 1
    lp = vocab_parallel_logprobs(logits, tg, positions=torch.zeros(0, dtype=torch.long))
    assert lp.shape == (0,)
    (grad,) = torch.autograd.grad(lp.sum(), logits, allow_unused=True)
    assert grad is None or grad.abs().sum() == 0


# ---------------------------------------------------------------- in-place backward contract


def _grads(build, inplace):
    """Gradient w.r.t. a leaf upstream of the logits, for a loss built by ``build(logits, op)``."""
    x, tg = _data()
    leaf = x.clone().requires_grad_()
    logits = leaf * 1  # stands in for the output layer
    op = lambda lg, **kw: vocab_parallel_logprobs(lg, tg, inplace_backward=inplace, **kw)  # noqa: E731
    build(logits, op).backward()
    return leaf.grad


def _exact_reference(build):
    x, tg = _data()
    leaf = x.clone().requires_grad_()
    op = lambda lg, temperature=1.0: _ref_logprobs(lg, tg, temperature)  # noqa: E731
    build(leaf * 1, op).backward()
    return leaf.grad


UNSAFE = {
    # another consumer saved the logits and its backward runs after ours (it was created first)
    "consumer_saving_logits_created_before": lambda lg, op: (lg ** 2).sum() + op(lg).sum(),
    "consumer_saving_a_view_created_before": lambda lg, op: (lg[:, :4] ** 2).sum() + op(lg).sum(),
    # the op applied twice to the same logits
    "applied_twice": lambda lg, op: op(lg).sum() + op(lg, temperature=2.0).sum(),
}

SAFE = {
    "alone": lambda lg, op: op(lg).sum(),
    # consumers whose backward does not read the logits' values
    "plus_linear_consumer": lambda lg, op: (lg * 2).sum() + op(lg).sum(),
    "plus_exp_consumer": lambda lg, op: lg.exp().sum() + op(lg).sum(),  # exp saves its output
    "plus_softmax_consumer": lambda lg, op: lg.softmax(-1)[:, 0].sum() + op(lg).sum(),
    # a consumer that saved the logits but was created after the op: its backward runs first
    "consumer_saving_logits_created_after": lambda lg, op: op(lg).sum() + (lg ** 2).sum(),
}


@pytest.mark.parametrize("name", sorted(UNSAFE))
def test_inplace_misuse_raises(name):
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        _grads(UNSAFE[name], inplace=True)
    # ...while the out-of-place backward handles the same graph exactly
    torch.testing.assert_close(_grads(UNSAFE[name], inplace=False), _exact_reference(UNSAFE[name]),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(SAFE))
@pytest.mark.parametrize("inplace", [True, False])
def test_documented_safe_patterns_are_exact(name, inplace):
    torch.testing.assert_close(_grads(SAFE[name], inplace), _exact_reference(SAFE[name]), rtol=1e-12, atol=1e-14)


def test_second_backward_through_retained_graph_raises():
    x, tg = _data()
    logits = x.clone().requires_grad_() * 1
    lp = vocab_parallel_logprobs(logits, tg)
    lp.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        lp.sum().backward()


def test_after_inplace_backward_the_logits_hold_the_gradient():
    """Documented: reading the logits after backward gives the gradient, not the logits."""
    x, tg = _data()
    logits = x.clone().requires_grad_() * 1
    lp = vocab_parallel_logprobs(logits, tg)
    (grad,) = torch.autograd.grad(lp.sum(), logits)
    assert grad.data_ptr() == logits.data_ptr()
    assert torch.equal(logits.detach(), grad)


# ---------------------------------------------------------------- memory bound


def _peak_extra_bytes(fn):
    """Peak bytes the torch CPU allocator holds during ``fn()`` above what it held before (allocations made
    inside and freed after still count)."""
    from dcpo_mcore.ops.profiling import peak_allocated_bytes

    peak = peak_allocated_bytes(fn)
    assert peak is not None, "the profiler recorded no memory events"
    return peak


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_positions", [False, True])
@pytest.mark.parametrize("inplace", [True, False])
def test_extra_memory_is_bounded_by_the_chunk(dtype, with_positions, inplace):
    n, vocab, chunk = 2048, 2048, 128
    logits = torch.randn(n, vocab).to(dtype).requires_grad_() * 1
    targets = torch.randint(0, vocab, (n,))
    positions = torch.arange(0, n, 3) if with_positions else None

    def step():
        lp, _ = vocab_parallel_logprobs(logits, targets, positions=positions, chunk_size=chunk,
                                        inplace_backward=inplace, return_entropy=True)
        torch.autograd.grad(lp.mean(), logits)

    peak = _peak_extra_bytes(step)
    chunk_bytes = chunk * vocab * 4  # the fp32 scratch
    gathered = chunk * vocab * logits.element_size() if with_positions else 0
    full = logits.numel() * logits.element_size()  # a fresh gradient buffer
    bound = chunk_bytes + gathered + 64 * n * 8 + (0 if inplace else full)  # 64 * n * 8: O(T) vectors
    assert peak <= bound, f"peak {peak / 2**20:.2f} MiB > bound {bound / 2**20:.2f} MiB"
    assert peak >= chunk_bytes  # the measurement sees the scratch buffer at all


def test_memory_measurement_sees_a_full_log_softmax():
    x = torch.randn(512, 1024, requires_grad=True)
    peak = _peak_extra_bytes(lambda: torch.log_softmax(x, -1).sum().backward())
    assert peak >= 2 * x.numel() * 4  # output + gradient


@pytest.mark.parametrize("inplace", [True, False])
def test_strided_logits_view(inplace):
    """A column slice of a wider buffer (e.g. a padded vocabulary): the gradient is exact and the
    in-place backward writes only inside the view."""
    x, tg = _data()
    wide = torch.cat([x, torch.full((T, 5), 7.0, dtype=x.dtype)], dim=1).requires_grad_()
    base = wide * 1
    logits = base[:, :V]
    assert not logits.is_contiguous()
    lp = vocab_parallel_logprobs(logits, tg, temperature=1.3, chunk_size=3, inplace_backward=inplace,
                                 positions=torch.tensor([6, 0, 2, 5]))
    (grad,) = torch.autograd.grad(lp.sum(), logits)
    xr = x.clone().requires_grad_()
    ref = torch.log_softmax(xr / 1.3, -1)[[6, 0, 2, 5], tg[[6, 0, 2, 5]]]
    (ref_grad,) = torch.autograd.grad(ref.sum(), xr)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-15)
    assert torch.equal(base[:, V:].detach(), torch.full((T, 5), 7.0, dtype=x.dtype))
