"""Vocab-parallel logprobs at TP = 1, 2, 4 against a float64 single-process reference (one 4-rank launch)."""
import pytest

from tests.dist.launcher import launch

N_TOKENS, VOCAB = 37, 96  # chunk sizes 5 and 64 do not divide T = 37; V/4 = 24


@pytest.fixture(scope="module")
def records():
    per_rank = launch("tests.dist.vocab_parallel_worker:check_all", world_size=4,
                      kwargs={"n_tokens": N_TOKENS, "vocab": VOCAB}, timeout_s=150)
    return [rec for rank_records in per_rank for rec in rank_records]


def _failures(recs):
    bad = []
    for rec in recs:
        for name, (err, tol) in rec["checks"].items():
            if not err <= tol:  # also catches NaN
                case = {k: v for k, v in rec.items() if k != "checks"}
                bad.append(f"{name}: err {err:.3g} > tol {tol:.3g} in {case}")
    return bad


@pytest.mark.dist
def test_every_case_matches_float64_reference(records):
    failures = _failures(records)
    assert not failures, f"{len(failures)} failing checks, first 20:\n" + "\n".join(failures[:20])


@pytest.mark.dist
def test_case_matrix_is_complete(records):
    """Guards against a worker that silently checks nothing."""
    seen = {(r["tp"], r["dtype"], r["positions"], r["temperature"], r["inplace"], r["chunk"], r["group"])
            for r in records}
    for tp in (1, 2, 4):
        for dtype in ("float64", "float32", "bfloat16"):
            for pos in ("all", "index", "mask"):
                for temp in (1.0, 0.6):
                    for inplace in (True, False):
                        for chunk in (5, 64, 1):
                            assert (tp, dtype, pos, temp, inplace, chunk, "group") in seen
    assert {r["rank"] for r in records} == {0, 1, 2, 3}
    assert any(r["group"] == "none" for r in records)  # tp_group=None path
    assert any(r["masked_vocab"] for r in records)
    n_checks = sum(len(r["checks"]) for r in records)
    assert n_checks > 2000, n_checks
    # float64 exactness really was measured (not just within a loose bound)
    fp64_grad = max(r["checks"]["grad"][0] for r in records if r["dtype"] == "float64")
    assert fp64_grad < 1e-12
