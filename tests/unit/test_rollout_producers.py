"""Where the loop's batches come from (dcpo_mcore/trainer/producers.py): the on-policy and the ahead
producer's step timings by hand, the ahead producer over a stand-in generator, and the checkpoint
form of batches generated ahead."""
import math
import threading
import time

import pytest

from dcpo_mcore.data.records import PromptRecord
from dcpo_mcore.trainer.producers import AheadProducer, OnPolicyProducer, build_producer
from dcpo_mcore.trainer.rollout_stage import RolloutBatch, batches_from_bytes, batches_to_bytes

PHASES = {"timing/step_seconds": 10.0, "timing/update_seconds": 4.0, "timing/sync_seconds": 1.0,
          "timing/eval_seconds": 0.5, "timing/save_seconds": 0.25}


def test_on_policy_timing_by_hand(monkeypatch):
    clock = iter([100.0, 103.0])  # the generation takes 3 s
    monkeypatch.setattr("dcpo_mcore.trainer.producers.time.perf_counter", lambda: next(clock))
    producer = OnPolicyProducer(lambda step: f"batch {step}")
    assert producer.take(4) == "batch 4" and producer.before_push(4) == 0.0 and producer.buffered() == {}
    got = producer.step_timing(PHASES, push_wait=0.0)
    assert got == {"timing/trainer_idle_seconds": 3.0, "timing/rollout_idle_seconds": 7.0,
                   "timing/overlap_ratio": 0.0,
                   "timing/orchestration_seconds": pytest.approx(10.0 - 3.0 - 4.0 - 1.0 - 0.5 - 0.25)}


def test_ahead_timing_by_hand():
    producer = AheadProducer(lambda s: s, first=0, last_step=0, max_staleness=1, wait_for_generation=True)
    try:
        producer._wait, producer._generation = 0.5, 2.0  # waited 0.5 s of a 2 s generation
        producer._buffer.rollout_idle_seconds = 1.5
        got = producer.step_timing(PHASES, push_wait=0.25)
        assert got["timing/trainer_idle_seconds"] == 0.75 and got["timing/overlap_ratio"] == 1 - 0.75 / 2.0
        assert got["timing/rollout_idle_seconds"] == 1.5
        assert got["timing/orchestration_seconds"] == pytest.approx(10.0 - 0.5 - 0.25 - 5.75)
        producer._buffer.rollout_idle_seconds = 2.0  # the next step counts only its own idle time
        assert producer.step_timing(PHASES, 0.0)["timing/rollout_idle_seconds"] == 0.5
    finally:
        producer.close()


def test_the_choice_is_made_once_from_the_config():
    assert isinstance(build_producer(lambda s: s, max_staleness=0, push_mode="wait", first=0, last_step=3),
                      OnPolicyProducer)
    assert isinstance(build_producer(None, max_staleness=2, push_mode="wait", first=0, last_step=3),
                      OnPolicyProducer)  # a rank without a generator only takes part in the collectives
    ahead = build_producer(lambda s: s, max_staleness=2, push_mode="abort", first=0, last_step=3)
    try:
        assert isinstance(ahead, AheadProducer) and ahead.max_staleness == 2
        assert ahead.before_push(1) == 0.0  # abort mode: the push does not wait for generation
    finally:
        ahead.close()


def test_ahead_generates_while_training_and_quiet_holds_it():
    started = []
    gate = threading.Event()

    def generate(step):
        started.append(step)
        gate.wait(5.0)
        return {"step": step}

    producer = AheadProducer(generate, first=0, last_step=3, max_staleness=1, wait_for_generation=True)
    try:
        gate.set()
        assert producer.take(1) == {"step": 1}
        deadline = time.monotonic() + 5.0
        while 2 not in producer.buffered():  # step 2 (version 0) is made while step 1 "trains"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert producer.before_push(1) >= 0.0  # nothing that needs version 0 is left
        with producer.quiet():
            producer.after_push(1)  # step 3 may start now, but not inside quiet()
            time.sleep(0.05)
            assert started == [1, 2]
        deadline = time.monotonic() + 5.0
        while 3 not in producer.buffered():
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert producer.take(2) == {"step": 2} and producer.take(3) == {"step": 3}
    finally:
        producer.close()


def test_close_aborts_a_generation_in_progress():
    aborted = threading.Event()
    producer = AheadProducer(lambda s: aborted.wait(5.0), first=0, last_step=2, max_staleness=1,
                             wait_for_generation=True, abort=aborted.set)
    t0 = time.monotonic()
    producer.close()
    assert aborted.is_set() and time.monotonic() - t0 < 2.0


def test_buffered_batches_survive_the_checkpoint_form_exactly():
    record = PromptRecord(key="math:3", messages=[{"role": "user", "content": "1+1?"}], prompt_text="1+1?",
                          prompt_ids=[4, 5], ground_truth="2", data_source="math", index="3")
    batch = RolloutBatch(2, keys=["math:3"] * 2, prompt_ids=[[4, 5]] * 2, response_ids=[[7], [8, 9]],
                         sampler_logprobs=[[-0.125], [float("nan"), -1e-30]], rewards=[1.0, -1.0],
                         correct=[True, False], format_error=[False, True], truncated=[False, False],
                         generated_responses=2, generation_rounds=1, cursor_state={"epoch": 0, "pos": 4},
                         group_records=[record], group_versions=[{"3", "4"}])
    got = batches_from_bytes(batches_to_bytes({6: batch}))
    assert list(got) == [6]
    back = got[6]
    assert back.group_records == [record] and back.group_versions == [{"3", "4"}]
    assert back.sampler_logprobs[0] == [-0.125] and math.isnan(back.sampler_logprobs[1][0])
    assert back.sampler_logprobs[1][1] == -1e-30 and back.cursor_state == batch.cursor_state
    assert back.keys == batch.keys and back.response_ids == batch.response_ids and back.rewards == batch.rewards
