"""The engine's response-token log-probs equal Hugging Face transformers' (float32) for every family and layout.

One 4-rank launch: for each model and layout the ranks re-initialise megatron's parallel state, build the
engine from the HF checkpoint and run the forward-only pass; every rank then holds every sample's
log-probs (DP shares are gathered, PP results come from the last stage). With 4 ranks, TP1 runs as DP4
and TP2 / PP2 as DP2, so the DP split and gather are exercised too. The vocab (~400) is padded to 512, so
the padded-column masking is exercised on the last TP rank.
"""
import pytest

from tests.dist.launcher import launch

pytestmark = pytest.mark.dist
W = "tests.dist.engine_worker"
TOL = 1e-5

LAYOUTS = [
    {"tp": 1}, {"tp": 2}, {"pp": 2}, {"tp": 2, "pp": 2},
    # packed rows (block-diagonal masks, restarting positions) and interleaved PP with sequence parallel
    {"tp": 2, "pp": 2, "packed": True, "sequence_parallel": True}, {"pp": 2, "vpp": 2, "packed": True},
]


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    from tests.dist.engine_worker import make_tiny_models

    models = make_tiny_models(str(tmp_path_factory.mktemp("engine_models")))
    cases = list(models.values())
    cases.append({**models["llama"], "name": "llama_t0.7", "temperature": 0.7})
    return launch(f"{W}:logprob_parity", world_size=4, args=(cases, LAYOUTS), timeout_s=240)


def _row(results, case, layout):
    return next(r for r in results if r["case"] == case and r["layout"] == layout)


@pytest.mark.parametrize("case", ["qwen2", "qwen3", "llama", "llama_t0.7"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda d: "_".join(f"{k}{v}" for k, v in d.items()))
def test_logprobs_match_hf(parity, case, layout):
    for rank, results in enumerate(parity):
        row = _row(results, case, layout)
        assert row["lengths_ok"], f"rank {rank}: wrong number of log-probs per sample"
        assert row["max_diff"] < TOL, f"rank {rank} {case} {layout}: max |engine - HF| = {row['max_diff']:.3g}"
        assert row["entropy_ok"], f"rank {rank}: entropy not finite / negative"


def test_every_rank_gets_the_same_logprobs(parity):
    # The gather is an exact sum of zeros and one contribution, so all ranks agree bit for bit.
    for results in parity[1:]:
        assert [r["max_diff"] for r in results] == [r["max_diff"] for r in parity[0]]
