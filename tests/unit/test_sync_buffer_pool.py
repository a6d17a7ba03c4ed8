"""The weight-sync bucket buffer pool picks and takes out free buffers by position, never by ``==``.

Regression: ``BufferPool.acquire`` used ``list.remove(tensor)``, which compares the free buffers with
``==``, elementwise. Whenever the chosen buffer was not the first free one (two buffers back before the
packer needed one, e.g. the big one a tensor larger than a bucket needed and a normal one), it raised
"The size of tensor a (102400) must match the size of tensor b (65536)" on trainer rank 0 in the middle
of the gather; the other ranks, blocked sending their shards to rank 0, then died with gloo's
"Connection closed by peer ... typically caused by a remote worker crashing" (the flaky TP2xPP2 push).
"""
import queue
import threading

import torch

from dcpo_mcore.sync.buckets import BucketPacker, BufferPool, unpack


def _two_free(pool: BufferPool, first: int, second: int):
    """Put two free buffers of ``first`` and ``second`` bytes into the pool, in that order."""
    a, b = pool.acquire(first), pool.acquire(second)
    ptrs = a.buffer.data_ptr(), b.buffer.data_ptr()
    a.release()
    b.release()
    return ptrs


def test_the_smallest_fitting_buffer_is_taken_when_it_is_not_the_first_free_one():
    pool = BufferPool(64, capacity=3)
    big, small = _two_free(pool, 400, 64)  # free: [big, small]
    lease = pool.acquire(64)
    assert lease.buffer.data_ptr() == small  # the smallest that fits, though second in the list
    again = pool.acquire(64)
    assert again.buffer.data_ptr() == big and pool.allocations == 2 and pool.lent == 2


def test_a_bigger_buffer_that_is_not_the_first_free_one_is_taken():
    pool = BufferPool(64, capacity=3)
    big, small = _two_free(pool, 400, 64)
    a, b = pool.acquire(64), pool.acquire(400)  # take both back, then return the small one first
    assert (a.buffer.data_ptr(), b.buffer.data_ptr()) == (small, big)
    a.release()
    b.release()  # free: [small, big]
    assert pool.acquire(200).buffer.data_ptr() == big  # only the second one fits
    fresh = pool.acquire(200)  # the small one does not fit: it is replaced by a new buffer
    assert fresh.buffer.data_ptr() not in (small, big) and fresh.buffer.numel() == 200
    assert pool.allocations == 3 and pool.lent == 2


def test_replacing_the_smallest_free_buffer_works_when_it_is_not_the_first():
    pool = BufferPool(64, capacity=2)
    big, small = _two_free(pool, 400, 64)  # free: [big, small], capacity reached
    lease = pool.acquire(1000)  # neither fits: the smallest (second) is replaced by a big enough one
    assert lease.buffer.numel() == 1000 and pool.allocations == 3
    assert pool.acquire(64).buffer.data_ptr() == big  # the other one stayed


def test_packing_with_a_sender_that_returns_two_buffers_at_once():
    """The real pattern: a tensor bigger than a bucket (embedding), then small ones, while the sender
    sometimes finishes two buckets before the packer needs its next buffer (free: [big, small])."""
    pool = BufferPool(64, capacity=3)
    received, held = [], []

    def emit(bucket):  # release in pairs, oldest (the big one) first
        received.append(unpack(bucket))
        held.append(bucket)
        if len(held) == 2:
            for b in held:
                b.release()
            held.clear()

    packer = BucketPacker(bucket_bytes=64, emit=emit, pool=pool)
    tensors = {"embed": torch.arange(100, dtype=torch.float32)}
    tensors.update({f"w{i}": torch.full((16,), float(i)) for i in range(8)})
    for name, t in tensors.items():
        packer.add(name, t)
    packer.flush()
    for b in held:
        b.release()
    got = {n: t for r in received for n, t in r.items()}
    assert got.keys() == tensors.keys() and all(torch.equal(got[n], t) for n, t in tensors.items())
    assert pool.lent == 0


def test_pool_under_a_racing_sender_thread_never_raises():
    """Sender thread releasing at its own pace (as BucketSender after each broadcast): whatever order the
    buffers come back in, acquire never fails and every byte arrives."""
    pool = BufferPool(64, capacity=3)
    q: "queue.Queue" = queue.Queue(maxsize=1)
    received, errors = [], []

    def sender():
        while (bucket := q.get()) is not None:
            received.append(unpack(bucket))
            bucket.release()

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    packer = BucketPacker(bucket_bytes=64, emit=q.put, pool=pool)
    expected = {}
    try:
        for i in range(300):
            n = 100 if i % 7 == 0 else 16  # a big one now and then: mixed buffer sizes in the pool
            expected[f"w{i}"] = torch.full((n,), float(i))
            packer.add(f"w{i}", expected[f"w{i}"])
        packer.flush()
    except Exception as exc:  # noqa: BLE001 - reported below
        errors.append(exc)
    q.put(None)
    t.join(10)
    assert errors == []
    got = {n: v for r in received for n, v in r.items()}
    assert got.keys() == expected.keys() and all(torch.equal(got[n], v) for n, v in expected.items())
