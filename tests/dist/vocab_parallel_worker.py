"""Rank-side checks for ``vocab_parallel_logprobs`` (run through :mod:`tests.dist.launcher`).

One launch of 4 ranks covers TP = 1, 2 and 4: every rank builds the sub-groups ``[r]``,
``[0, 1] / [2, 3]`` and ``[0, 1, 2, 3]``, takes its vocab slice of a full logits matrix that every
rank generates identically from a seed, runs the op, and compares logprobs, entropy and the gradient
w.r.t. its shard with a single-process float64 ``log_softmax`` reference computed from the full
matrix. Nothing is asserted here: every comparison is returned as a record and the test asserts.
"""
from __future__ import annotations

import itertools

import torch
import torch.distributed as dist

from dcpo_mcore.ops import vocab_parallel_logprobs

# Normwise relative tolerance, max|ours - ref| / max|ref|, per input dtype and quantity. float64
# inputs check exactness (the brief asks for 1e-6; fp64 math lands near 1e-15). float32 and bfloat16
# inputs are compared with the float64 reference evaluated on the *same* rounded inputs, so only the
# op's own fp32 arithmetic (and, for bf16, the rounding of the gradient to bf16) is measured.
TOL = {
    torch.float64: {"logprob": 1e-6, "entropy": 1e-6, "grad": 1e-6},
    torch.float32: {"logprob": 2e-6, "entropy": 2e-6, "grad": 2e-6},
    torch.bfloat16: {"logprob": 2e-6, "entropy": 2e-6, "grad": 1e-2},
}


def _reference(full64, targets, rows, temperature, grad_out):
    """float64 logprobs/entropy at ``rows`` and d(sum grad_out * logprob)/d logits, from the full vocab."""
    x = full64.clone().requires_grad_()
    logp = torch.log_softmax(x / temperature, dim=-1)
    lp = logp[rows, targets[rows]]
    ent = -torch.special.xlogy(logp.exp(), logp.exp()).sum(-1)[rows]
    (grad,) = torch.autograd.grad(lp, x, grad_out)
    return lp.detach(), ent.detach(), grad


def _rel_err(ours, ref):
    ours, ref = ours.double(), ref.double()
    scale = ref.abs().max().clamp_min(1e-30)
    return float((ours - ref).abs().max() / scale)


def _make_case(seed, n_tokens, vocab, dtype, masked):
    gen = torch.Generator().manual_seed(seed)
    full = torch.randn(n_tokens, vocab, generator=gen, dtype=torch.float64) * 3.0
    targets = torch.randint(0, vocab, (n_tokens,), generator=gen)
    if masked:  # padded vocabulary tail, plus one row whose whole last quarter is -inf
        full[:, vocab - 7:] = float("-inf")
        full[0, 3 * vocab // 4:] = float("-inf")
        targets = torch.randint(0, 3 * vocab // 4 - 1, (n_tokens,), generator=gen)
    full = full.to(dtype).to(torch.float64)  # the reference sees exactly the rounded inputs
    perm = torch.randperm(n_tokens, generator=gen)
    subset = perm[: n_tokens // 2]  # unsorted indices
    mask = torch.zeros(n_tokens, dtype=torch.bool)
    mask[perm[n_tokens // 2 + 3:]] = True
    return full, targets, {"all": None, "index": subset, "mask": mask}


def _run_one(full64, targets, positions, dtype, group, g_rank, g_size, temperature, chunk,
             inplace, with_entropy, grad_seed):
    n_tokens, vocab = full64.shape
    v_local = vocab // g_size
    cols = slice(g_rank * v_local, (g_rank + 1) * v_local)
    rows = torch.arange(n_tokens) if positions is None else (
        positions.nonzero().squeeze(1) if positions.dtype == torch.bool else positions)
    grad_out = torch.randn(rows.shape[0], generator=torch.Generator().manual_seed(grad_seed),
                           dtype=torch.float64)
    ref_lp, ref_ent, ref_grad = _reference(full64, targets, rows, temperature, grad_out)

    leaf = full64[:, cols].to(dtype).requires_grad_()
    logits = leaf * 1  # a non-leaf, like a model output
    pristine = logits.detach().clone()
    out = vocab_parallel_logprobs(logits, targets, tp_group=group, temperature=temperature,
                                  positions=positions, chunk_size=chunk, inplace_backward=inplace,
                                  return_entropy=with_entropy)
    lp, ent = out if with_entropy else (out, None)
    (grad,) = torch.autograd.grad(lp, logits, grad_out.to(lp.dtype))
    tol = TOL[dtype]
    checks = {
        "logprob": (_rel_err(lp, ref_lp), tol["logprob"]),
        "grad": (_rel_err(grad, ref_grad[:, cols]), tol["grad"]),
        # the in-place backward must return the logits' own storage; the other must not touch it
        "grad_storage": (0.0 if (grad.data_ptr() == logits.data_ptr()) == inplace else 1.0, 0.0),
        "shape": (0.0 if lp.shape == rows.shape and grad.shape == logits.shape else 1.0, 0.0),
    }
    if with_entropy:
        checks["entropy"] = (_rel_err(ent, ref_ent), tol["entropy"])
        checks["entropy_no_grad"] = (0.0 if not ent.requires_grad else 1.0, 0.0)
    if not inplace:
        checks["logits_untouched"] = (0.0 if torch.equal(logits.detach(), pristine) else 1.0, 0.0)
    return checks


def check_all(n_tokens: int = 37, vocab: int = 96) -> list[dict]:
    """Run the whole case matrix on this rank; return one record per case."""
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 4, "check_all expects 4 ranks (TP groups of size 1, 2 and 4)"
    groups = {}
    for size in (1, 2, 4):  # every rank creates every group, in the same order
        for first in range(0, world, size):
            ranks = list(range(first, first + size))
            g = dist.new_group(ranks=ranks)
            if rank in ranks:
                groups[size] = g
    records = []
    case_id = 0
    dtypes = (torch.float64, torch.float32, torch.bfloat16)
    for tp, dtype, pos_kind, temperature, inplace in itertools.product(
            (1, 2, 4), dtypes, ("all", "index", "mask"), (1.0, 0.6), (True, False)):
        for chunk, with_entropy, masked in ((5, True, False), (64, False, False), (1, True, True)):
            case_id += 1
            full64, targets, positions = _make_case(1000 + case_id, n_tokens, vocab, dtype, masked)
            group, g_rank = groups[tp], dist.get_rank(groups[tp])
            variants = [("group", group)] + ([("none", None)] if tp == 1 else [])
            for group_kind, grp in variants:
                checks = _run_one(full64, targets, positions[pos_kind], dtype, grp, g_rank, tp,
                                  temperature, chunk, inplace, with_entropy, grad_seed=case_id)
                records.append({
                    "rank": rank, "tp": tp, "group": group_kind, "dtype": str(dtype).split(".")[-1],
                    "positions": pos_kind, "temperature": temperature, "inplace": inplace,
                    "chunk": chunk, "entropy": with_entropy, "masked_vocab": masked, "checks": checks,
                })
    return records


def hang_or_raise(mode: str) -> int:
    """Launcher self-test target. ``raise``: rank 1 raises while the others wait in a barrier.
    ``hang``: every rank but 0 waits in a barrier that rank 0 never joins."""
    import os

    rank = dist.get_rank()
    pid_dir = os.environ.get("DIST_TEST_PID_DIR")
    if pid_dir:  # lets the test check that the launcher really killed us
        with open(os.path.join(pid_dir, f"{rank}.pid"), "w") as f:
            f.write(str(os.getpid()))
    if mode == "raise" and rank == 1:
        raise ValueError("deliberate failure on rank 1")
    if mode == "hang" and rank == 0:
        import time

        time.sleep(3600)
    dist.barrier()
    return rank


def rank_and_args(*args, **kwargs):
    """Launcher self-test target: echoes what it received and where it ran."""
    import os

    return {"rank": dist.get_rank(), "world": dist.get_world_size(), "args": args, "kwargs": kwargs,
            "omp": os.environ.get("OMP_NUM_THREADS"), "threads": torch.get_num_threads(),
            "sum": float(_all_reduce_rank())}


def _all_reduce_rank():
    t = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(t)
    return t.item()
