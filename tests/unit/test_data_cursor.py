"""PromptCursor: exact resume, epochs as permutations, distinct batches, seed-only ordering, state checks."""
import json
import random

import pytest

from dcpo_mcore.data import PromptCursor
from dcpo_mcore.data.cursor import _epoch_seed

CONFIGS = [(10, 4, True), (7, 3, True), (5, 5, True), (6, 1, True), (12, 4, True), (9, 2, False), (11, 8, True)]


def batches(cursor, k):
    return [cursor.next_batch() for _ in range(k)]


def n_batches(n, bs, epochs=4):
    return -(-epochs * n // bs)  # enough batches to cover `epochs` epochs


@pytest.mark.parametrize("n,bs,shuffle", CONFIGS)
def test_resume_at_every_batch_reproduces_the_future(n, bs, shuffle):
    total = n_batches(n, bs)
    reference = batches(PromptCursor(n, bs, shuffle=shuffle, seed=3), total)
    for cut in range(total):
        first = PromptCursor(n, bs, shuffle=shuffle, seed=3)
        assert batches(first, cut) == reference[:cut]
        state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
        resumed = PromptCursor(n, bs, shuffle=shuffle, seed=3)
        resumed.load_state_dict(state)
        assert batches(resumed, total - cut) == reference[cut:], (n, bs, cut)


@pytest.mark.parametrize("n,bs,shuffle", CONFIGS)
def test_every_epoch_is_a_permutation_and_batches_are_distinct(n, bs, shuffle):
    out = batches(PromptCursor(n, bs, shuffle=shuffle, seed=11), n_batches(n, bs, epochs=6))
    assert all(len(b) == bs and len(set(b)) == bs for b in out)
    stream = [i for b in out for i in b]
    epochs = [stream[k * n:(k + 1) * n] for k in range(len(stream) // n)]
    assert len(epochs) >= 6
    assert all(sorted(e) == list(range(n)) for e in epochs)
    if shuffle and n >= 5:
        assert len({tuple(e) for e in epochs}) > 1  # it really reshuffles every epoch
    if not shuffle:
        assert all(e == list(range(n)) for e in epochs)


def test_crossing_batch_avoids_items_the_raw_next_order_would_repeat():
    # Seeds whose raw epoch-1 order starts with an item still in the partial batch: without the head
    # adjustment the crossing batch would hold that prompt twice. Check such seeds exist and are handled.
    exercised = 0
    for seed in range(40):
        c = PromptCursor(10, 4, seed=seed)
        b1, b2, crossing = batches(c, 3)
        tail = crossing[:2]
        assert c.state_dict()["carry"] == tail and c.state_dict()["head"] == 2
        raw = list(range(10))
        random.Random(_epoch_seed(seed, 1)).shuffle(raw)
        exercised += bool(set(raw[:2]) & set(tail))
        assert len(set(crossing)) == 4 and sorted(b1 + b2 + tail) == list(range(10))
    assert exercised >= 5


def test_order_depends_only_on_seed_and_epoch_not_global_rng_or_batch_size():
    a = PromptCursor(12, 4, seed=5)
    b = PromptCursor(12, 6, seed=5)
    random.seed(123)
    stream_a = [i for _ in range(15) for i in (random.random(), a.next_batch())[1]]
    random.seed(999)
    stream_b = [i for _ in range(10) for i in (random.random(), b.next_batch())[1]]
    assert stream_a == stream_b  # both batch sizes divide 12: no adjustment, pure (seed, epoch) orders
    other = PromptCursor(12, 4, seed=6)
    assert [i for _ in range(15) for i in other.next_batch()] != stream_a


def test_state_dict_is_plain_json_and_reports_position():
    c = PromptCursor(10, 4, seed=2)
    batches(c, 3)
    state = c.state_dict()
    assert json.loads(json.dumps(state)) == state
    assert {k: state[k] for k in ("epoch", "position", "seed", "num_items", "batch_size", "shuffle")} == {
        "epoch": 1, "position": 2, "seed": 2, "num_items": 10, "batch_size": 4, "shuffle": True}


@pytest.mark.parametrize("field,value,words", [
    ("num_items", 11, "num_items 11 -> 10"), ("seed", 8, "seed 8 -> 2"), ("shuffle", False, "shuffle False -> True")])
def test_resume_refuses_a_changed_dataset_or_seed(field, value, words):
    c = PromptCursor(10, 4, seed=2)
    c.next_batch()
    state = {**c.state_dict(), field: value}
    fresh = PromptCursor(10, 4, seed=2)
    with pytest.raises(ValueError, match="cannot resume the prompt cursor") as err:
        fresh.load_state_dict(state)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert fresh.state_dict()["position"] == 0  # untouched by the failed load


def test_resume_refuses_incomplete_or_corrupt_state():
    c = PromptCursor(10, 4, seed=2)
    with pytest.raises(ValueError, match="lacks carry, head"):
        c.load_state_dict({"epoch": 0, "position": 0, "seed": 2, "num_items": 10, "batch_size": 4, "shuffle": True})
    good = PromptCursor(10, 4, seed=2).state_dict()
    for bad in ({"position": 10}, {"position": -1}, {"epoch": "1"}, {"carry": [10]}, {"head": 3}):
        with pytest.raises(ValueError, match="state is corrupt"):
            c.load_state_dict({**good, **bad})


def test_resume_with_a_new_batch_size_finishes_the_epoch_in_the_same_order():
    ref = PromptCursor(10, 4, seed=4)
    batches(ref, 3)  # now mid-epoch 1, with a head adjustment in force
    state = ref.state_dict()
    assert state["head"] > 0
    expected_rest_of_epoch = [i for b in batches(ref, 2) for i in b]  # positions 2..9 of epoch 1
    resumed = PromptCursor(10, 2, seed=4)
    resumed.load_state_dict(state)
    got = [i for b in batches(resumed, 4) for i in b]
    assert got == expected_rest_of_epoch and resumed.epoch == 2 and resumed.position == 0


def test_constructor_rejects_bad_sizes():
    with pytest.raises(ValueError, match="batch size 5 > 4 prompts"):
        PromptCursor(4, 5)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="positive int"):
            PromptCursor(4, bad)
    with pytest.raises(ValueError, match="seed must be an int"):
        PromptCursor(4, 2, seed="0")
