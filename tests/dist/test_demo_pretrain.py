"""The demo's pretraining stage through the megatron engine: it learns, it stops on accuracy, it continues
exactly from its own checkpoint, and the HF directory it saves is the engine's model.

One 2-rank launch at TP2 (the export gathers TP shards; evaluation runs on rank 0 and the stop decision is
broadcast), on the demo's model architecture and a small slice of the arithmetic task.
"""
import math

import pytest

from tests.dist.launcher import launch

pytestmark = pytest.mark.dist
TOL = 1e-5
DEMO_MODEL = {"num_layers": 3, "hidden_size": 128, "ffn_hidden_size": 384, "num_attention_heads": 4,
              "num_query_groups": 2, "vocab_size": 64, "max_position_embeddings": 64, "params_dtype": "float32"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from dcpo_mcore.data import arith_alphabet, make_arithmetic_task
    from dcpo_mcore.demo import make_char_tokenizer, make_demo_model
    from dcpo_mcore.demo.pretraining import records_from_files

    root = tmp_path_factory.mktemp("demo_pretrain")
    tok = make_char_tokenizer(None, arith_alphabet(), model_max_length=64)
    hf = make_demo_model(root / "init", DEMO_MODEL, tok, seed=2)
    train_file, eval_file = make_arithmetic_task(root / "data", seed=2, n_train=48, n_eval=16)
    rows = lambda f: [{"prompt_ids": r.prompt_ids, "ground_truth": r.ground_truth}  # noqa: E731
                      for r in records_from_files(tok, f)]
    return launch("tests.dist.demo_pretrain_worker:pretrain_checks", world_size=2,
                  args=(str(hf), str(root / "work"), rows(train_file), rows(eval_file), {"tp": 2}), timeout_s=420)


def test_loss_falls_substantially(runs):
    losses = [loss for _, loss in runs[0]["c"]["losses"]]
    assert all(math.isfinite(x) for x in losses)
    # 48 examples seen 10 times: the response cross-entropy (ln 64 ~ 4.2 at random) must collapse
    assert losses[0] > 2.5 and sum(losses[-3:]) / 3 < 0.5 * losses[0], losses


def test_every_rank_sees_the_same_run(runs):
    assert runs[0] == {**runs[1], "hf_vs_engine": runs[0]["hf_vs_engine"]}
    assert runs[1]["hf_vs_engine"] is None  # only rank 0 loads the HF model


def test_limits_and_evaluations(runs):
    a, c = runs[0]["a"], runs[0]["c"]
    assert (a["steps"], a["stop_reason"], a["reached"]) == (20, "max_steps", False)
    assert [s for s, _ in a["history"]] == [10, 20] and [s for s, _ in c["history"]] == [10, 20, 30]
    assert all(0.0 <= acc <= 1.0 for _, acc in a["history"])


def test_stops_on_accuracy_target(runs):
    d = runs[0]["d"]
    assert (d["steps"], d["stop_reason"], d["reached"]) == (3, "target", True)


def test_continuation_is_the_same_run(runs):
    b, c = runs[0]["b"], runs[0]["c"]
    assert (b["steps"], b["total_steps"]) == (10, 30)
    assert [s for s, _ in b["losses"]] == list(range(21, 31))
    # weights, Adam moments and step count, and the data cursor all carried over: C's steps 21..30
    for (step, got), (_, want) in zip(b["losses"], c["losses"][20:]):
        assert got == pytest.approx(want, abs=1e-5), f"step {step}: continued {got} vs uninterrupted {want}"
    assert b["history"][-1][1] == c["history"][-1][1]


def test_saved_hf_dir_is_the_engine_model(runs):
    assert runs[0]["hf_vs_engine"] < TOL, runs[0]["hf_vs_engine"]
