"""``RewardPool`` with real worker processes: adversarial answers, timeouts, lifecycle.

Timeouts are short (1 s) to keep the file fast on 2 cores. Every adversarial answer must come back
within timeout + slack, score as wrong, and leave the pool able to grade normal answers.
"""
import os
import signal
import threading
import time

import pytest

from dcpo_mcore.reward import MathVerifier, RewardPool
from dcpo_mcore.reward import worker_handle

TIMEOUT_S = 1.0
SLACK_S = 1.0  # kill + respawn bookkeeping; a respawn itself does not block the caller

# Answers that make sympy/math-verify run for minutes, exhaust memory, or are simply huge.
# The ground truth is deliberately NOT an integer, so these reach the symbolic stage.
ADVERSARIAL_BOXED = [
    "10^{10^{10^{10}}}",
    "9^9^9^9",
    "(10^{100})!",
    "10^{10^{10}}",
    "\\sin(10^{10^{10}})",
    "\\binom{10^{20}}{10^{10}}",
    "\\Gamma(10^{10})",
    "\\int_0^{10^{10}} e^{x^2} dx",
    "(" * 30 + "x" + ")" * 30,  # slow ANTLR parse
    "\\frac{" * 100 + "1" + "}{2}" * 100,  # deep pathological LaTeX
    "1+" * 50_000 + "1",  # 100 KB answer: over the symbolic length cap, string compare only
    "{" * 100_000 + "}" * 100_000,  # 10^5 nested braces
]
ADVERSARIAL_TRUTH = "\\frac{\\pi}{2}"
NORMAL_ITEM = ("so the answer is \\boxed{\\frac{\\sqrt{2}}{2}}", "\\sqrt{2}/2")  # needs math-verify


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def pool():
    with RewardPool("math", scheme="ternary", num_workers=2, timeout_s=TIMEOUT_S) as grading_pool:
        grading_pool.wait_ready(timeout_s=120)
        yield grading_pool


@pytest.mark.parametrize("answer", ADVERSARIAL_BOXED, ids=[f"adv{i}" for i in range(len(ADVERSARIAL_BOXED))])
def test_adversarial_answer_times_out_or_fails_as_wrong(pool, answer):
    # One free worker is enough; a previous timeout's replacement may still be warming up.
    pool.wait_ready(timeout_s=120, min_workers=1)
    start = time.monotonic()
    result = pool.grade(f"Thus \\boxed{{{answer}}}", ADVERSARIAL_TRUTH)
    elapsed = time.monotonic() - start
    assert elapsed < TIMEOUT_S + SLACK_S, elapsed
    assert (result.correct, result.has_box, result.reward) == (False, True, 0.0)
    assert pool.last_batch_stats.timeouts == int(result.timed_out)
    # The pool keeps working right after: a normal answer that needs math-verify is still correct.
    assert pool.grade(*NORMAL_ITEM).reward == 1.0


def test_some_adversarial_answers_really_time_out(pool):
    pool.wait_ready(timeout_s=120)
    before = pool.stats.timeouts
    result = pool.grade("\\boxed{10^{10^{10^{10}}}}", ADVERSARIAL_TRUTH)
    assert result.timed_out and result.error and result.reward == 0.0
    assert pool.stats.timeouts == before + 1
    assert pool.stats.worker_restarts >= 1


def test_binary_scheme_timeout_is_minus_one(pool, monkeypatch):
    monkeypatch.setattr(pool, "verifier", MathVerifier(scheme="binary"))
    pool.wait_ready(timeout_s=120, min_workers=1)
    result = pool.grade("\\boxed{10^{10^{10^{10}}}}", ADVERSARIAL_TRUTH)
    assert result.timed_out and result.has_box and result.reward == -1.0


def test_mixed_batch_keeps_input_order_and_counts_timeouts(pool):
    pool.wait_ready(timeout_s=120)
    items = [
        ("\\boxed{10^{10^{10}}}", ADVERSARIAL_TRUTH),  # timeout -> 0
        ("\\boxed{7}", "7"),  # cheap -> 1
        ("no box", "7"),  # -> -1
        ("\\boxed{(3,\\pi/2)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),  # math-verify -> 1
        ("\\boxed{9^{9^{9^{9}}}}", ADVERSARIAL_TRUTH),  # timeout -> 0
        ("\\boxed{q-p}", "p - q"),  # math-verify -> 0
        NORMAL_ITEM,  # -> 1
        ("\\boxed{10^{10^{10^{10}}}}", "42"),  # integer truth: decided cheaply -> 0
    ]
    start = time.monotonic()
    results = pool.grade_batch(items)
    elapsed = time.monotonic() - start
    assert [r.reward for r in results] == [0.0, 1.0, -1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert [r.timed_out for r in results] == [True, False, False, False, True, False, False, False]
    assert pool.last_batch_stats.timeouts == 2
    assert pool.last_batch_stats.graded == len(items)
    assert pool.last_batch_stats.symbolic == 5
    # Two timeouts on two workers run in parallel; replacements start while others keep going.
    assert elapsed < 2 * TIMEOUT_S + 10.0, elapsed


def test_cheap_items_never_reach_a_worker(pool):
    items = [
        ("no box here " * 10_000, "5"),
        ("\\fbox{5}", "5"),
        ("\\boxed{5}", "5"),
        ("\\boxed{6}", "5"),
        ("\\boxed{10^{10^{10^{10}}}}", "5"),  # integer ground truth: literal required, no sympy
        ("\\boxed{0.5}", "\\frac{1}{2}"),
        ("\\boxed{" + "9" * 5000 + "}", "\\frac{1}{2}"),  # over the length cap
    ]
    start = time.monotonic()
    results = pool.grade_batch(items)
    assert time.monotonic() - start < 0.5
    assert pool.last_batch_stats.symbolic == 0
    assert [r.reward for r in results] == [-1.0, -1.0, 1.0, 0.0, 0.0, 1.0, 0.0]


def test_worker_killed_mid_answer_scores_wrong_and_pool_recovers(pool):
    pool.wait_ready(timeout_s=120)
    with RewardPool("math", num_workers=1, timeout_s=30.0) as solo:
        solo.wait_ready(timeout_s=120)
        victim = solo.worker_pids[0]
        killer = threading.Timer(0.5, os.kill, args=(victim, signal.SIGKILL))
        killer.start()
        result = solo.grade("\\boxed{10^{10^{10^{10}}}}", ADVERSARIAL_TRUTH)
        killer.join()
        assert not result.correct and not result.timed_out and "died" in result.error
        assert result.reward == 0.0
        assert solo.last_batch_stats.errors == 1
        assert solo.worker_pids[0] != victim
        assert solo.grade(*NORMAL_ITEM).reward == 1.0


def test_close_kills_every_worker_even_a_stuck_one_and_rejects_use():
    grading_pool = RewardPool("math", num_workers=2, timeout_s=60.0)
    grading_pool.wait_ready(timeout_s=120)
    assert grading_pool.grade(*NORMAL_ITEM).correct
    pids = grading_pool.worker_pids
    assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    # Hand one worker an endless answer directly (as grade_batch would), then close without waiting.
    grading_pool._workers[0].send({"id": 0, "kind": "math", "pred": "10^{10^{10^{10}}}", "ground_truths": ["x/2"]})
    time.sleep(0.3)
    start = time.monotonic()
    grading_pool.close()
    assert time.monotonic() - start < 5.0
    grading_pool.close()  # idempotent
    assert not any(_alive(pid) for pid in pids)
    assert grading_pool.worker_pids == []
    with pytest.raises(RuntimeError, match="closed"):
        grading_pool.grade_batch([NORMAL_ITEM])


def test_broken_worker_environment_raises_instead_of_hanging(monkeypatch):
    monkeypatch.setattr(worker_handle.sys, "executable", "/bin/false")
    grading_pool = RewardPool("math", num_workers=1, timeout_s=TIMEOUT_S, startup_timeout_s=10.0)
    try:
        with pytest.raises(RuntimeError, match="failed to start"):
            grading_pool.grade("\\boxed{x}", "y")
    finally:
        grading_pool.close()


def test_exact_match_pool_starts_no_workers():
    with RewardPool("exact_match", scheme="binary", num_workers=2, timeout_s=TIMEOUT_S) as exact_pool:
        results = exact_pool.grade_batch([("\\boxed{95}", "95"), ("95", "95"), ("\\boxed{96}", "95")])
        assert [r.reward for r in results] == [1.0, 1.0, -1.0]
        assert exact_pool.last_batch_stats.symbolic == 0
        assert exact_pool.worker_pids == []


def test_unclosed_pool_is_cleaned_up_by_garbage_collection():
    import gc

    grading_pool = RewardPool("math", num_workers=1, timeout_s=TIMEOUT_S)
    pids = grading_pool.worker_pids
    del grading_pool
    gc.collect()
    assert not any(_alive(pid) for pid in pids)


def test_interrupted_batch_does_not_leak_into_the_next(pool, monkeypatch):
    pool.wait_ready(timeout_s=120)
    real_poll = pool._poll
    calls = []

    def interrupt_once(*args):
        if not calls:
            calls.append(1)
            raise KeyboardInterrupt
        return real_poll(*args)

    monkeypatch.setattr(pool, "_poll", interrupt_once)
    with pytest.raises(KeyboardInterrupt):
        pool.grade_batch([("\\boxed{(3,\\pi/2)}", "(3, \\frac{\\pi}{2})"), ("\\boxed{q-p}", "p-q")])
    monkeypatch.undo()
    results = pool.grade_batch([("\\boxed{q-p}", "p-q"), ("\\boxed{(3,\\pi/2)}", "(3, \\frac{\\pi}{2})")])
    assert [r.reward for r in results] == [0.0, 1.0]


def test_grading_from_a_non_main_thread(pool):
    """The trainer may grade from a helper thread; math-verify must not need the main thread."""
    results = []
    thread = threading.Thread(target=lambda: results.extend(pool.grade_batch([NORMAL_ITEM, ("\\boxed{q-p}", "p-q")])))
    thread.start()
    thread.join(timeout=120)
    assert [r.reward for r in results] == [1.0, 0.0]
