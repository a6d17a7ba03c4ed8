"""A failure while rank 0 packs buckets must not escape the gather (WeightSync._stream).

If it does, rank 0 leaves the collective while the other trainer ranks are still sending it their shards;
they then die with gloo's "Connection closed by peer ... typically caused by a remote worker crashing",
which names no cause (how the BufferPool bug showed in CI). Rank 0 must keep receiving, and the attempt
must end with ONE fatal line, naming the cause, that every rank raises.
"""
import torch

from dcpo_mcore.sync import weight_sync as ws
from dcpo_mcore.sync.buckets import BucketPacker
from dcpo_mcore.sync.sender import _Timing


class _FakeSender:
    def __init__(self, *args, **kwargs):
        self.buckets, self.timing = [], _Timing()

    def submit(self, bucket):
        self.buckets.append(bucket)
        bucket.release()

    def finish(self):
        return None


def _rank0_sync(monkeypatch, names_seen):
    def fake_stream(chunks, arch, te, sink, **kwargs):  # what every rank's gather gives rank 0's sink
        for i in range(6):
            names_seen.append(f"w{i}")
            sink(f"w{i}", torch.full((64,), float(i)))

    monkeypatch.setattr(ws, "stream_hf_tensors", fake_stream)
    monkeypatch.setattr(ws, "BucketSender", _FakeSender)
    monkeypatch.setattr(ws, "expected_hf_shapes", lambda arch: None)
    sync = ws.WeightSync.__new__(ws.WeightSync)  # rank 0 without a process group
    sync.engine = type("E", (), {"chunks": [], "arch": None, "uses_te": False})()
    sync.settings, sync.rank0, sync.backend, sync.admins = ws.SyncSettings(bucket_bytes=256), True, "gloo", []
    sync.manager, sync._pg, sync._group_name, sync._pool, sync._pack_error = None, None, "g", None, None
    return sync


def test_a_packing_error_on_rank_0_keeps_the_gather_going_and_is_fatal_in_one_line(monkeypatch):
    names_seen = []
    sync = _rank0_sync(monkeypatch, names_seen)
    real_add = BucketPacker.add
    calls = []

    def add(self, name, tensor):
        calls.append(name)
        if name == "w2":
            raise RuntimeError("The size of tensor a (102400) must match the size of tensor b (65536)")
        return real_add(self, name, tensor)

    monkeypatch.setattr(BucketPacker, "add", add)
    sender = sync._stream({})  # must not raise: the other ranks are still sending
    assert names_seen == [f"w{i}" for i in range(6)]  # every shard was still received...
    assert calls == ["w0", "w1", "w2"]  # ...and the rest dropped, not packed
    status = sync._complete(sender, "v1", {"stream": 0.0})
    assert status[0] == "fatal" and len(status) == 3 and "\n" not in status[1]
    assert "packing w2 on trainer rank 0 failed: RuntimeError: The size of tensor a" in status[1]
    assert sync._pool.lent == 0  # the half-filled buffer went back


def test_without_a_packing_error_the_attempt_completes(monkeypatch):
    names_seen = []
    sync = _rank0_sync(monkeypatch, names_seen)
    sender = sync._stream({})
    assert sync._pack_error is None and [n for b in sender.buckets for n in b.names] == names_seen
    status = sync._complete(sender, "v1", {"stream": 0.0})
    assert status[0] == "ok", status
