"""The bounded-staleness schedule and rank 0's generation thread (dcpo_mcore/trainer/ahead.py), with a
stand-in for SGLang that records which weight version each batch was generated under."""
import threading
import time

import pytest

from dcpo_mcore.trainer.ahead import AheadBuffer, generation_version, last_step_needing


def test_schedule_by_hand():
    assert [generation_version(t, 0, 0) for t in range(1, 5)] == [0, 1, 2, 3]  # on-policy
    assert [generation_version(t, 0, 1) for t in range(1, 5)] == [0, 0, 1, 2]
    assert [generation_version(t, 0, 2) for t in range(1, 6)] == [0, 0, 0, 1, 2]
    assert [generation_version(t, 10, 1) for t in range(11, 14)] == [10, 10, 11]  # resumed at step 10
    assert last_step_needing(3, 2) == 5 and generation_version(5, 0, 2) == 2 < 3
    with pytest.raises(ValueError, match=">= 0"):
        generation_version(1, 0, -1)


class Servers:
    """Holds a weight version; a generation takes a little while and records the version it saw."""

    def __init__(self, version: int, fail_at: int | None = None):
        self.version, self.fail_at, self.lock = version, fail_at, threading.Lock()
        self.calls = []

    def generate(self, step: int) -> dict:
        if step == self.fail_at:
            raise ConnectionError("server gone")
        seen_before = self.version
        time.sleep(0.01)
        assert self.version == seen_before, "the weights changed during a generation"
        self.calls.append(step)
        return {"step": step, "version": seen_before}


def _train(buffer: AheadBuffer, servers: Servers, steps: range, k: int, first: int, train_s: float = 0.03):
    seen = []
    for step in steps:
        batch, _waited = buffer.take(step)
        seen.append((step, batch["version"]))
        time.sleep(train_s)  # training
        if k and step < buffer.last_step:  # the next step is generated while this one trains (no push needed)
            deadline = time.monotonic() + 10.0
            while step + 1 not in buffer.buffered():
                assert time.monotonic() < deadline, "nothing was generated during training"
                time.sleep(0.005)
        buffer.wait_before_push(step)
        servers.version = step
        buffer.pushed(step)
    return seen


@pytest.mark.parametrize("k", [0, 1, 2])
def test_every_batch_is_generated_with_its_scheduled_version(k):
    servers = Servers(version=0)
    buffer = AheadBuffer(servers.generate, first=0, last_step=6, max_staleness=k)
    try:
        seen = _train(buffer, servers, range(1, 7), k, first=0)
    finally:
        buffer.close()
    assert seen == [(t, generation_version(t, 0, k)) for t in range(1, 7)]
    assert servers.calls == list(range(1, 7))  # each step once, in order, never past the last step
    assert set(buffer.generation_seconds) == set(range(1, 7))


def test_on_policy_never_generates_ahead():
    servers = Servers(version=0)
    buffer = AheadBuffer(servers.generate, first=0, last_step=3, max_staleness=0)
    try:
        batch, _ = buffer.take(1)
        time.sleep(0.05)
        assert buffer.buffered() == {} and servers.calls == [1]  # step 2 waits for version 1
    finally:
        buffer.close()


def test_a_resumed_buffer_starts_after_its_restored_batches():
    servers = Servers(version=4)
    restored = {5: {"step": 5, "version": 2}, 6: {"step": 6, "version": 3}}
    buffer = AheadBuffer(servers.generate, first=4, last_step=8, max_staleness=2, preloaded=restored)
    try:
        seen = _train(buffer, servers, range(5, 9), 2, first=4)
    finally:
        buffer.close()
    assert seen == [(5, 2), (6, 3), (7, 4), (8, 5)]  # the uninterrupted run's versions
    assert servers.calls == [7, 8]


def test_a_failed_generation_reaches_the_trainer_with_its_cause():
    servers = Servers(version=0, fail_at=2)
    buffer = AheadBuffer(servers.generate, first=0, last_step=4, max_staleness=1)
    try:
        buffer.take(1)
        with pytest.raises(RuntimeError, match="ahead of training failed") as info:
            buffer.take(2)
        assert isinstance(info.value.__cause__, ConnectionError)
        with pytest.raises(RuntimeError):
            buffer.wait_before_push(1)
    finally:
        buffer.close()


def test_close_releases_a_waiting_trainer():
    servers = Servers(version=0)
    buffer = AheadBuffer(servers.generate, first=0, last_step=3, max_staleness=0)
    buffer.take(1)
    threading.Timer(0.05, buffer.close).start()
    with pytest.raises(RuntimeError, match="closed"):
        buffer.take(2)  # step 2 waits for version 1, which never comes
