"""The flattened-bucket layout SGLang expects (docs/platform.md [sglang-flattened-bucket]) and the checks
before sending."""
import pytest
import torch

from dcpo_mcore.sync.buckets import Bucket, BucketPacker, dtype_name, unpack, validate_bucket
from dcpo_mcore.sync.group import reachable_address


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(3, 5, generator=g), "b": torch.randn(7, generator=g).to(torch.bfloat16),
            "c": torch.randn(2, 2, 2, generator=g), "d": torch.randn(40, generator=g)}


def test_packing_is_the_concatenation_of_flat_byte_views_in_name_order():
    out = []
    packer = BucketPacker(bucket_bytes=1 << 20, emit=out.append)
    ts = _tensors()
    for n, t in ts.items():
        packer.add(n, t)
    packer.flush()
    assert len(out) == 1 and out[0].names == list(ts)
    expected = torch.cat([t.reshape(-1).view(torch.uint8) for t in ts.values()])
    assert torch.equal(out[0].data, expected)
    assert out[0].dtypes == ["float32", "bfloat16", "float32", "float32"]
    assert out[0].shapes == [[3, 5], [7], [2, 2, 2], [40]]
    back = unpack(out[0])
    assert all(torch.equal(back[n], t) for n, t in ts.items())


def test_bucket_boundaries_respect_the_size_and_a_big_tensor_travels_alone():
    out = []
    # a=60 B, b=14 B, c=32 B, d=160 B with a 100-byte cap: [a, b], [c], [d]
    packer = BucketPacker(bucket_bytes=100, emit=out.append)
    for n, t in _tensors().items():
        packer.add(n, t)
    packer.flush()
    assert [b.names for b in out] == [["a", "b"], ["c"], ["d"]]
    assert [b.index for b in out] == [0, 1, 2]
    assert packer.total_bytes == 60 + 14 + 32 + 160 == sum(b.nbytes for b in out)


def test_packer_casts_to_the_wire_dtype():
    out = []
    packer = BucketPacker(bucket_bytes=1 << 20, emit=out.append, dtype=torch.bfloat16)
    packer.add("a", torch.ones(4))
    packer.flush()
    assert out[0].dtypes == ["bfloat16"] and out[0].nbytes == 8
    assert torch.equal(unpack(out[0])["a"], torch.ones(4, dtype=torch.bfloat16))


@pytest.mark.parametrize("bucket, expected_shapes, message", [
    (Bucket(0, ["w"], ["int64"], [[2]], torch.zeros(16, dtype=torch.uint8)), None, "w has dtype int64"),
    (Bucket(1, ["w"], ["float32"], [[3]], torch.zeros(12, dtype=torch.uint8)), {"w": (2,)},
     "bucket 1: w has shape [3] but the model's is [2]"),
    (Bucket(2, ["x"], ["float32"], [[2]], torch.zeros(8, dtype=torch.uint8)), {"w": (2,)}, "x is not a tensor"),
    (Bucket(3, ["w"], ["float32"], [[2]], torch.zeros(7, dtype=torch.uint8)), {"w": (2,)}, "describe 8"),
])
def test_bad_buckets_are_refused_in_one_line(bucket, expected_shapes, message):
    with pytest.raises(ValueError) as err:
        validate_bucket(bucket, expected_shapes)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_good_bucket_passes_validation():
    validate_bucket(Bucket(0, ["w", "v"], ["float32", "bfloat16"], [[2], [3]], torch.zeros(14, dtype=torch.uint8)),
                    {"w": (2,), "v": (3,)})


def test_dtype_names_are_torch_attribute_names():
    assert dtype_name(torch.float32) == "float32" and dtype_name(torch.bfloat16) == "bfloat16"


def test_local_servers_are_reached_over_loopback():
    assert reachable_address(["http://127.0.0.1:30000", "http://localhost:30001"]) == "127.0.0.1"


# --------------------------------------------------------------------------- the buffer pool


import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from dcpo_mcore.sync.buckets import BufferPool
from tests.fakes.json_http import send_json


def _mixed_tensors():
    """Views of all kinds (strided, sliced, 0-d) and dtypes that leave odd byte offsets."""
    g = torch.Generator().manual_seed(1)
    fused = torch.randn(4, 6, 5, generator=g)
    return {"q": fused[:, :4], "k": fused[:, 4], "half": torch.randn(8, 3, generator=g).chunk(2)[1],
            "odd_bf16": torch.randn(7, generator=g).to(torch.bfloat16), "after_odd": torch.randn(3, 2, generator=g),
            "scalar": torch.tensor(2.5), "t": torch.randn(3, 4, generator=g).t()}


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("bucket_bytes", [64, 1 << 20])
def test_pooled_packing_gives_the_same_bytes_as_concatenation(dtype, bucket_bytes):
    ts = _mixed_tensors()
    plain, pooled = [], []
    pool = BufferPool(bucket_bytes, capacity=3)

    def keep(bucket):  # snapshot, then hand the buffer back as a sender does after the broadcast
        pooled.append(Bucket(bucket.index, bucket.names, bucket.dtypes, bucket.shapes, bucket.data.clone()))
        bucket.release()

    for out, kw in ((plain, {"emit": plain.append}), (None, {"emit": keep, "pool": pool})):
        packer = BucketPacker(bucket_bytes=bucket_bytes, dtype=dtype, **kw)
        for n, t in ts.items():
            packer.add(n, t)
        packer.flush()
    assert [b.names for b in plain] == [b.names for b in pooled] and len(plain) > 0
    for a, b in zip(plain, pooled):
        cast = [(t if dtype is None else t.to(dtype)) for n, t in ts.items() if n in a.names]
        assert torch.equal(a.data, torch.cat([t.contiguous().reshape(-1).view(torch.uint8) for t in cast]))
        assert torch.equal(a.data, b.data) and a.shapes == b.shapes and a.dtypes == b.dtypes
        back = unpack(b)
        assert all(torch.equal(back[n], ts[n] if dtype is None else ts[n].to(dtype)) for n in b.names)
    assert pool.lent == 0


def test_pool_buffers_are_reused_across_buckets_and_pushes():
    pool = BufferPool(256, capacity=3)
    seen = []

    def emit(bucket):
        seen.append(bucket.data.data_ptr())
        bucket.release()

    for _push in range(3):
        packer = BucketPacker(bucket_bytes=256, emit=emit, pool=pool)
        for i in range(20):
            packer.add(f"w{i}", torch.full((32,), float(i)))  # 128 B: two per bucket
        packer.flush()
    assert len(seen) == 30 and pool.allocations == 1 and len(set(seen)) == 1  # one buffer, always refilled
    assert pool.lent == 0


def test_a_tensor_bigger_than_a_buffer_gets_a_big_enough_one():
    pool = BufferPool(64, capacity=2)
    got = []
    packer = BucketPacker(bucket_bytes=64, emit=lambda b: (got.append(unpack(b)), b.release()), pool=pool)
    big = torch.arange(100, dtype=torch.float32)
    packer.add("small", torch.ones(4))
    packer.add("big", big)
    packer.add("small2", torch.ones(4))
    packer.flush()
    assert [list(g) for g in got] == [["small"], ["big"], ["small2"]]
    assert torch.equal(got[1]["big"], big) and pool.lent == 0


class _SlowSender:
    """A sender thread that 'broadcasts' each bucket for ``delay`` seconds: during that time it keeps
    checking that nobody writes into the buffer, then releases it (as BucketSender does after the
    broadcast work completed). Queue of depth one, like BucketSender."""

    def __init__(self, pool, delay=0.02):
        import queue

        self.pool, self.delay = pool, delay
        self.queue = queue.Queue(maxsize=1)
        self.received, self.corrupted, self.max_lent = [], [], 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def submit(self, bucket):
        self.queue.put(bucket)

    def _run(self):
        while (bucket := self.queue.get()) is not None:
            self.max_lent = max(self.max_lent, self.pool.lent)
            snapshot = bucket.data.clone()
            end = time.monotonic() + self.delay
            while time.monotonic() < end:  # "on the wire": the packer must not touch this buffer
                if not torch.equal(bucket.data, snapshot):
                    self.corrupted.append(bucket.index)
                    break
                time.sleep(0.001)
            self.received.append(unpack(bucket))
            bucket.release()  # "work completed"

    def finish(self):
        self.queue.put(None)
        self.thread.join()


def test_a_buffer_is_never_refilled_while_its_broadcast_may_still_read_it():
    pool = BufferPool(512, capacity=3)
    sender = _SlowSender(pool)
    packer = BucketPacker(bucket_bytes=512, emit=sender.submit, pool=pool)
    expected = {}
    for i in range(24):
        expected[f"w{i}"] = torch.full((128,), float(i))  # 512 B: one bucket each
        packer.add(f"w{i}", expected[f"w{i}"])
    packer.flush()
    sender.finish()
    assert sender.corrupted == []
    assert {n: t for got in sender.received for n, t in got.items()}.keys() == expected.keys()
    assert all(torch.equal(got[n], expected[n]) for got in sender.received for n in got)
    assert pool.allocations == 3 and sender.max_lent <= 3  # on the wire, queued, filling
    assert pool.wait_s > 0  # the packer did wait for a buffer to come back
    assert pool.lent == 0


def test_a_discarded_buffer_is_never_lent_again():
    pool = BufferPool(16, capacity=1)
    first = pool.acquire(16)
    first.buffer.fill_(7)
    first.discard()  # e.g. a broadcast timed out: it may still be reading this buffer
    first.release()  # a later release of the same lease is a no-op
    second = pool.acquire(16)
    assert second.buffer.data_ptr() != first.buffer.data_ptr() and pool.allocations == 2
    second.buffer.fill_(1)
    assert bool((first.buffer == 7).all())
    second.release()
    assert pool.acquire(16).buffer.data_ptr() == second.buffer.data_ptr()


def test_acquire_blocks_until_a_buffer_comes_back():
    pool = BufferPool(16, capacity=1)
    lease = pool.acquire(16)
    with pytest.raises(TimeoutError):
        pool.acquire(16, timeout_s=0.05)
    threading.Timer(0.05, lease.release).start()
    assert pool.acquire(16, timeout_s=5).buffer.data_ptr() == lease.buffer.data_ptr()


class _Work:
    """A fake async broadcast that completes ``delay`` s after it started (or never)."""

    def __init__(self, delay):
        self.end = None if delay is None else time.monotonic() + delay

    def is_completed(self):
        return self.end is not None and time.monotonic() >= self.end

    def wait(self):
        while not self.is_completed():
            time.sleep(0.001)


class _Admin:
    url = "http://fake:1"

    def update_weights_from_distributed(self, req):
        return None


def test_the_real_sender_releases_only_after_the_broadcast_completed(monkeypatch):
    from dcpo_mcore.sync import sender as sender_mod

    pool = BufferPool(64, capacity=3)
    log = []

    def broadcast(data, group, group_src, async_op):
        work = _Work(0.03)
        log.append((data.data_ptr(), data.clone(), work))
        return work

    monkeypatch.setattr(sender_mod.dist, "broadcast", broadcast)
    sender = sender_mod.BucketSender(None, [_Admin()], "g", timeout_s=5.0)
    packer = BucketPacker(bucket_bytes=64, emit=sender.submit, pool=pool)
    original = pool._give_back

    def give_back(lease, reuse):  # every release must come after the broadcast of that buffer completed
        for ptr, _data, work in log:
            if ptr == lease.buffer.data_ptr() and reuse:
                assert work.is_completed(), "buffer released while its broadcast may still read it"
        original(lease, reuse)

    monkeypatch.setattr(pool, "_give_back", give_back)
    for i in range(12):
        packer.add(f"w{i}", torch.full((16,), float(i)))
    packer.flush()
    assert sender.finish() is None
    assert len(log) == 12 and pool.allocations <= 3 and pool.lent == 0
    assert [float(d.view(torch.float32)[0]) for _p, d, _w in log] == [float(i) for i in range(12)]


def test_the_real_sender_discards_a_buffer_whose_broadcast_never_finished(monkeypatch):
    from dcpo_mcore.sync import sender as sender_mod

    pool = BufferPool(64, capacity=3)
    on_wire = []
    monkeypatch.setattr(sender_mod.dist, "broadcast", lambda data, **k: on_wire.append(data.data_ptr()) or _Work(None))
    sender = sender_mod.BucketSender(None, [_Admin()], "g", timeout_s=0.1)
    packer = BucketPacker(bucket_bytes=64, emit=sender.submit, pool=pool)
    for i in range(6):
        packer.add(f"w{i}", torch.full((16,), float(i)))
    packer.flush()
    failure = sender.finish()
    assert failure is not None and failure.poisoned and "did not finish" in failure.message
    # bucket 0 is stuck "on the wire" (discarded, never lent again); the others were dropped unsent (released)
    assert len(on_wire) == 1 and pool.lent == 0 and len(pool._free) == pool._live <= 3
    assert on_wire[0] not in [b.data_ptr() for b in pool._free]
    assert all(pool.acquire(64, timeout_s=1).buffer.data_ptr() != on_wire[0] for _ in range(pool._live))


# --------------------------------------------------------------------------- worker liveness probes


class _FakeSGLang(BaseHTTPRequestHandler):
    """/model_info answers with ``info`` (or ``info_status``), /health with ``health_status``."""

    info_status, health_status, info_delay, version = 200, 200, 0.0, "v3"
    calls: list

    def do_GET(self):  # noqa: N802
        self.calls.append(self.path)
        if self.path == "/model_info":
            time.sleep(self.info_delay)
            status, body = self.info_status, {"model_path": "m", "weight_version": self.version}
        elif self.path == "/health":
            status, body = self.health_status, {}
        else:
            status, body = 404, {}
        send_json(self, status, body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_server():
    servers = []

    def start(**attrs):
        handler = type("H", (_FakeSGLang,), {"calls": [], **attrs})
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}", handler.calls

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def _admin(url):
    from dcpo_mcore.rollout.admin import EngineAdmin

    return EngineAdmin(url, timeout_s=5)


def _closed_port_url():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_probe_uses_model_info_and_never_the_slow_health(fake_server):
    from dcpo_mcore.sync.liveness import probe_worker

    url, calls = fake_server()
    p = probe_worker(_admin(url))
    assert (p.alive, p.version, p.via) == (True, "v3", "model_info") and calls == ["/model_info"]


def test_probe_falls_back_to_health_when_model_info_fails(fake_server):
    from dcpo_mcore.sync.liveness import probe_worker

    url, calls = fake_server(info_status=500)
    p = probe_worker(_admin(url))
    assert (p.alive, p.version, p.via) == (True, None, "health") and calls == ["/model_info", "/health"]
    assert not probe_worker(_admin(url), fallback=False).alive
    url, _ = fake_server(info_status=500, health_status=503)
    assert probe_worker(_admin(url)).via == "unreachable"
    assert probe_worker(_admin(_closed_port_url())).via == "unreachable"


def test_a_worker_our_manager_is_restarting_is_not_alive_whatever_answers(fake_server):
    from dcpo_mcore.sync.liveness import probe_worker

    url, calls = fake_server()

    class Manager:
        def is_ready(self, u):
            return False

    assert probe_worker(_admin(url), Manager()).via == "manager" and calls == []


def test_workers_are_probed_in_parallel(fake_server):
    from dcpo_mcore.sync.liveness import wait_workers_ready

    urls = [fake_server(info_delay=0.4, version=f"v{i}")[0] for i in range(4)]
    t0 = time.perf_counter()
    probes = wait_workers_ready([_admin(u) for u in urls], timeout_s=10)
    assert time.perf_counter() - t0 < 1.2  # serially: 1.6 s
    assert [p.version for p in probes] == ["v0", "v1", "v2", "v3"] and [p.url for p in probes] == urls


def test_waiting_for_workers_reports_failures_in_one_line(fake_server):
    from dcpo_mcore.sync import SyncError
    from dcpo_mcore.sync.liveness import wait_workers_ready

    good, _ = fake_server()
    dead = _closed_port_url()
    with pytest.raises(SyncError) as err:
        wait_workers_ready([_admin(good), _admin(dead)], timeout_s=0.3, poll_s=0.05)
    assert dead in str(err.value) and "did not come back" in str(err.value) and "\n" not in str(err.value)

    class Manager:
        reports = []

        def is_ready(self, u):
            return u == good

        def is_failed(self, u):
            return u != good

        def report_failure(self, u, cause):
            self.reports.append(u)

    with pytest.raises(SyncError, match="has failed and will not be restarted"):
        wait_workers_ready([_admin(good), _admin(dead)], Manager(), timeout_s=5)


def test_a_worker_that_comes_back_is_waited_for(fake_server):
    from dcpo_mcore.sync.liveness import wait_workers_ready

    url, _ = fake_server()
    state = {"ready_after": time.monotonic() + 0.3, "reports": 0}

    class Manager:
        def is_ready(self, u):
            return time.monotonic() >= state["ready_after"]

        def is_failed(self, u):
            return False

        def report_failure(self, u, cause):
            state["reports"] += 1

    probes = wait_workers_ready([_admin(url)], Manager(), timeout_s=10, poll_s=0.05)
    assert probes[0].alive and probes[0].version == "v3" and state["reports"] >= 1


# --------------------------------------------------------------------------- no-copy export mode


@pytest.mark.parametrize("tp, pp, tied", [(1, 1, False), (2, 2, False), (1, 2, True), (2, 1, True)])
def test_no_copy_export_yields_the_same_tensors_without_needless_copies(tp, pp, tied):
    from dcpo_mcore.engine.hf_arch import ArchSpec
    from dcpo_mcore.engine.hf_mapping import expected_hf_shapes, hf_to_mcore_shard, iter_mcore_to_hf

    arch = ArchSpec(family="qwen2", num_layers=2, hidden_size=32, ffn_hidden_size=48, num_attention_heads=8,
                    num_query_groups=4, head_dim=8, vocab_size=301, max_position_embeddings=64, rms_norm_eps=1e-6,
                    rope_theta=1e4, rope_scaling=None, tie_word_embeddings=tied, qkv_bias=True, qk_norm=False,
                    torch_dtype="float32")
    g = torch.Generator().manual_seed(0)
    hf = {n: torch.randn(s, generator=g) for n, s in expected_hf_shapes(arch).items()}
    shards = {(r, p): hf_to_mcore_shard(hf.__getitem__, arch, r, tp, p, pp) for r in range(tp) for p in range(pp)}

    def get(p, name):
        return [shards[(r, p)][name] for r in range(tp)]

    fresh = list(iter_mcore_to_hf(get, arch, tp, pp))
    views = list(iter_mcore_to_hf(get, arch, tp, pp, copy=False))
    assert [n for n, _ in fresh] == [n for n, _ in views] == list(hf)
    for (name, a), (_, b) in zip(fresh, views):
        assert a.shape == b.shape == hf[name].shape and a.dtype == b.dtype and torch.equal(a, b), name
    # and the packer turns the views into exactly the bytes of the copies
    out_a, out_b = [], []
    for out, items in ((out_a, fresh), (out_b, views)):
        packer = BucketPacker(bucket_bytes=4096, emit=lambda b, out=out: (out.append(b.data.clone()), b.release()),
                              pool=BufferPool(4096))
        for n, t in items:
            packer.add(n, t)
        packer.flush()
    assert len(out_a) > 1 and all(torch.equal(x, y) for x, y in zip(out_a, out_b, strict=True))
    if tp == 1:  # gate/up halves are views of the megatron fc1 shard, not clones
        fc1 = shards[(0, 0)]["decoder.layers.0.mlp.linear_fc1.weight"]
        view = dict(views)["model.layers.0.mlp.gate_proj.weight"]
        assert view.data_ptr() == fc1.data_ptr()
        assert dict(fresh)["model.layers.0.mlp.gate_proj.weight"].data_ptr() != fc1.data_ptr()
