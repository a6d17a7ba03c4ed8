"""Rank 0's bucket sender: one thread that, per bucket, calls every server's
``/update_weights_from_distributed`` (each in its own thread: the call blocks until the server has
received the buffer) and broadcasts the buffer into the weight-update group in the same order.

The trainer's main thread keeps gathering and packing bucket k+1 while this thread broadcasts bucket
k (a queue of depth one: one bucket on the wire, one queued, one being filled -- the packer's pool of 3
buffers). Every bucket handed to :meth:`BucketSender.submit` is given back exactly once: released
(its buffer may be refilled) when its broadcast has completed or it was never sent, discarded when a
broadcast of it may still be running (a timeout or a rejection while the broadcast waits).

A server that rejects a request before receiving (wrong group, no begin_weight_update, dead) would
leave the broadcast waiting forever; the sender watches the HTTP answers while the broadcast runs
and gives up ``reject_grace_s`` after a rejection. The group is then unusable ("poisoned") and must
be re-formed before the next attempt.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch.distributed as dist

from dcpo_mcore.rollout.admin import EngineAdmin
from dcpo_mcore.errors import one_line
from dcpo_mcore.rollout.errors import describe_exception
from dcpo_mcore.rollout.wire import UpdateWeightsFromDistributedRequest

from .buckets import Bucket, validate_bucket

__all__ = ["BucketSender", "SendFailure"]


@dataclass
class SendFailure:
    message: str
    url: str | None = None  # the server at fault, when one is
    poisoned: bool = False  # the group has an unfinished broadcast: re-form it before reuse


@dataclass
class _Timing:
    broadcast_s: float = 0.0  # buffer on the wire (until the broadcast completed)
    server_load_s: float = 0.0  # broadcast completed -> every server answered (load_weights)
    wait_s: float = 0.0  # the gather thread blocked on a full queue
    buckets: int = 0
    bytes: int = 0


@dataclass
class BucketSender:
    pg: dist.ProcessGroup
    admins: Sequence[EngineAdmin]
    group_name: str
    timeout_s: float = 600.0
    reject_grace_s: float = 5.0
    expected_shapes: dict | None = None  # HF name -> shape of the model: buckets are checked against it
    timing: _Timing = field(default_factory=_Timing)
    failure: SendFailure | None = None

    def __post_init__(self):
        self._queue: queue.Queue[Bucket | None] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, name="dcpo-weight-sender", daemon=True)
        self._thread.start()

    def submit(self, bucket: Bucket) -> None:
        """Queue a bucket (blocks while one is waiting). After a failure, buckets are dropped: the
        other trainer ranks still finish the gather, and the attempt is retried as a whole."""
        if self.failure is not None:
            bucket.release()  # never sent
            return
        t0 = time.perf_counter()
        self._queue.put(bucket)
        self.timing.wait_s += time.perf_counter() - t0

    def finish(self) -> SendFailure | None:
        self._queue.put(None)
        self._thread.join()
        return self.failure

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while (bucket := self._queue.get()) is not None:
            if self.failure is not None:
                bucket.release()  # dropped after a failure: never sent
                continue
            try:
                self.failure = self._send(bucket)
            except Exception as exc:  # noqa: BLE001 - a gloo error from a dead peer, reported in one line
                self.failure = SendFailure(f"broadcast of bucket {bucket.index} failed: {describe_exception(exc)}",
                                           poisoned=True)
            finally:
                bucket.discard()  # no-op if _send released it; otherwise the broadcast may still read it

    def _send(self, bucket: Bucket) -> SendFailure | None:
        try:
            validate_bucket(bucket, self.expected_shapes)
        except ValueError as exc:  # nothing sent yet: the group and the servers are untouched
            bucket.release()
            return SendFailure(f"refused to send {exc}")
        req = UpdateWeightsFromDistributedRequest(
            names=bucket.names, dtypes=bucket.dtypes, shapes=bucket.shapes, group_name=self.group_name,
            load_format="flattened_bucket", flush_cache=True)
        answers: list[BaseException | None] = [None] * len(self.admins)
        done = [threading.Event() for _ in self.admins]

        def call(i: int) -> None:
            try:
                self.admins[i].update_weights_from_distributed(req)
            except BaseException as exc:  # noqa: BLE001 - handed to the sender thread
                answers[i] = exc
            finally:
                done[i].set()

        threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(len(self.admins))]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        work = dist.broadcast(bucket.data, group=self.pg, group_src=0, async_op=True)
        failure = self._watch(work, answers, done, bucket, t0)
        if failure is not None:
            return failure  # the broadcast may still be running: _run discards the buffer
        work.wait()
        t1 = time.perf_counter()
        bucket.release()  # the broadcast completed: the buffer may be refilled while the servers load
        for t in threads:
            t.join(max(1.0, self.timeout_s - (t1 - t0)))
        self.timing.broadcast_s += t1 - t0
        self.timing.server_load_s += time.perf_counter() - t1
        self.timing.buckets += 1
        self.timing.bytes += bucket.nbytes
        for admin, t, exc in zip(self.admins, threads, answers):
            if t.is_alive():
                return SendFailure(f"{admin.url} did not answer update_weights_from_distributed for bucket "
                                   f"{bucket.index} within {self.timeout_s:.0f} s", admin.url)
            if exc is not None:
                return SendFailure(f"{admin.url} rejected bucket {bucket.index} ({len(bucket.names)} tensors, "
                                   f"first {bucket.names[0]}): {one_line(exc, 400)}", admin.url)
        return None

    def _watch(self, work, answers, done, bucket: Bucket, t0: float) -> SendFailure | None:
        """Wait for the broadcast; give up if a server rejected the request and will never receive."""
        rejected_at = None
        while not work.is_completed():
            now = time.perf_counter()
            if now - t0 > self.timeout_s:
                return SendFailure(f"broadcast of bucket {bucket.index} ({bucket.nbytes} bytes) did not finish "
                                   f"within {self.timeout_s:.0f} s", poisoned=True)
            bad = [i for i, ev in enumerate(done) if ev.is_set() and answers[i] is not None]
            if bad:
                rejected_at = rejected_at or now
                if now - rejected_at > self.reject_grace_s:
                    admin = self.admins[bad[0]]
                    return SendFailure(f"{admin.url} rejected bucket {bucket.index} before receiving it: "
                                       f"{one_line(answers[bad[0]], 400)}", admin.url, poisoned=True)
            time.sleep(0.002)
        return None
