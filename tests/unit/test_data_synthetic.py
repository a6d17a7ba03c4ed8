"""The synthetic arithmetic task: correct answers, determinism, disjoint splits, loadable layout."""
import re

import pyarrow.parquet as pq
import pytest

from dcpo_mcore.data import (ARITH_BALANCED_DATA_SOURCE, DCPO_SYSTEM_PROMPT, DataError, arith_alphabet,
                             arith_questions, load_prompt_dataset, make_arithmetic_task)
from dcpo_mcore.hf.tiny import make_bpe_tokenizer

QUESTION = re.compile(r"What is (\d+)([+*])(\d+)\?")


def rows(path):
    return pq.read_table(path).to_pylist()


def question_of(row):
    return row["prompt"][-1]["content"]


def test_every_ground_truth_is_the_true_value_and_operands_are_in_range(tmp_path):
    train, evl = make_arithmetic_task(tmp_path, seed=0, n_train=400, n_eval=100)
    kinds = set()
    for row in rows(train) + rows(evl):
        a, op, b = QUESTION.fullmatch(question_of(row)).groups()
        a, b = int(a), int(b)
        kinds.add(op)
        assert row["reward_model"]["ground_truth"] == str(a + b if op == "+" else a * b)
        assert 10 <= b <= 99 and (10 <= a <= 99 if op == "+" else 1 <= a <= 9)
        assert row["data_source"] == "synthetic_arith"
    assert kinds == {"+", "*"}


def test_splits_are_disjoint_and_indices_unique(tmp_path):
    train, evl = make_arithmetic_task(tmp_path, seed=1, n_train=500, n_eval=200)
    tr, ev = rows(train), rows(evl)
    assert (len(tr), len(ev)) == (500, 200)
    tq, eq = {question_of(r) for r in tr}, {question_of(r) for r in ev}
    assert len(tq) == 500 and len(eq) == 200 and not tq & eq
    indices = [r["extra_info"]["index"] for r in tr + ev]
    assert sorted(indices) == list(range(700))
    assert {r["extra_info"]["split"] for r in tr} == {"train"} and {r["extra_info"]["split"] for r in ev} == {"eval"}


def _product_share(path):
    return sum("*" in question_of(r) for r in rows(path)) / len(rows(path))


def test_eval_is_an_iid_split_and_the_balanced_set_is_half_products(tmp_path):
    train, evl, balanced = make_arithmetic_task(tmp_path, seed=3, n_train=4000, n_eval=1000, n_eval_balanced=200)
    # i.i.d.: eval has the pool's product share (810 of 8910 = 9.1%), like train, not the balanced set's half
    assert abs(_product_share(evl) - 810 / 8910) < 0.03 and abs(_product_share(train) - 810 / 8910) < 0.03
    assert _product_share(balanced) == 0.5 and balanced.name == "eval_balanced.parquet"
    sets = [{question_of(r) for r in rows(p)} for p in (train, evl, balanced)]
    assert [len(q) for q in sets] == [4000, 1000, 200] and len(set().union(*sets)) == 5200  # pairwise disjoint
    assert [r["extra_info"]["index"] for r in rows(balanced)] == list(range(5000, 5200))
    assert {r["data_source"] for r in rows(balanced)} == {ARITH_BALANCED_DATA_SOURCE}
    assert {r["extra_info"]["split"] for r in rows(balanced)} == {"eval_balanced"}
    # asking for the balanced set leaves the i.i.d. files' composition alone
    assert abs(_product_share(make_arithmetic_task(tmp_path / "b", seed=3, n_train=4000, n_eval=1000)[1])
               - 810 / 8910) < 0.03


@pytest.mark.parametrize("n_bal,message", [(3, "must be even"), (1622, "at most 1620"), (-2, "non-negative int")])
def test_bad_balanced_sizes_are_refused(tmp_path, n_bal, message):
    with pytest.raises(DataError, match=message):
        make_arithmetic_task(tmp_path, seed=0, n_train=5, n_eval=5, n_eval_balanced=n_bal)


def test_deterministic_in_seed(tmp_path):
    a = make_arithmetic_task(tmp_path / "a", seed=7, n_train=50, n_eval=20)
    b = make_arithmetic_task(tmp_path / "b", seed=7, n_train=50, n_eval=20)
    c = make_arithmetic_task(tmp_path / "c", seed=8, n_train=50, n_eval=20)
    assert rows(a[0]) == rows(b[0]) and rows(a[1]) == rows(b[1])
    assert rows(a[0]) != rows(c[0])
    assert [p.name for p in a] == ["train.parquet", "eval.parquet"]


def test_question_pool_is_complete_and_mixed():
    pool = arith_questions(0)
    assert len(pool) == len({q for q, _ in pool}) == 90 * 90 + 9 * 90
    assert {q[8:].strip("0123456789?")[:1] for q, _ in pool[:20]} == {"+", "*"}  # any prefix mixes both kinds


def test_system_prompt_choice(tmp_path):
    plain, _ = make_arithmetic_task(tmp_path / "p", seed=0, n_train=3, n_eval=1)
    assert [m["role"] for m in rows(plain)[0]["prompt"]] == ["user"]
    sys_, _ = make_arithmetic_task(tmp_path / "s", seed=0, n_train=3, n_eval=1, system_prompt=DCPO_SYSTEM_PROMPT)
    prompt = rows(sys_)[0]["prompt"]
    assert [m["role"] for m in prompt] == ["system", "user"] and prompt[0]["content"] == DCPO_SYSTEM_PROMPT


def test_too_many_or_bad_sizes_are_refused(tmp_path):
    with pytest.raises(DataError, match="exceeds the 8910 distinct"):
        make_arithmetic_task(tmp_path, seed=0, n_train=8900, n_eval=11)
    with pytest.raises(DataError, match="exceeds the 8910 distinct"):
        make_arithmetic_task(tmp_path, seed=0, n_train=8700, n_eval=11, n_eval_balanced=200)
    with pytest.raises(DataError, match="n_eval must be a positive int"):
        make_arithmetic_task(tmp_path, seed=0, n_train=5, n_eval=0)


def test_alphabet_covers_prompts_and_boxed_answers(tmp_path):
    alphabet = set(arith_alphabet())
    for q, a in arith_questions(0):
        assert set(q) <= alphabet and set(f"\\boxed{{{a}}}") <= alphabet
    assert "," not in alphabet and set(arith_alphabet(DCPO_SYSTEM_PROMPT)) >= set(DCPO_SYSTEM_PROMPT) | alphabet


def test_files_load_with_the_prompt_loader(tmp_path):
    tok = make_bpe_tokenizer(None, vocab_size=300)
    train, evl = make_arithmetic_task(tmp_path, seed=2, n_train=64, n_eval=16)
    ds = load_prompt_dataset([train, evl], tok, chat_template="none", max_prompt_tokens=32)
    assert len(ds) == 80 and len(set(ds.keys)) == 80 and ds.report.skipped == 0 and ds.report.too_long == 0
    first = rows(train)[0]
    assert ds[0].prompt_text == question_of(first) and ds[0].key == "synthetic_arith:0"
    assert ds[0].ground_truth == first["reward_model"]["ground_truth"]
