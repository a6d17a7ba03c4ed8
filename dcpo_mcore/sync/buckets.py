"""Flattened weight buckets: SGLang's ``load_format="flattened_bucket"`` (docs/platform.md [sglang-flattened-bucket]).

The server receives ONE uint8 buffer per ``/update_weights_from_distributed`` call and cuts it back
into tensors from the request's names, dtypes and shapes: each tensor ``flatten().view(uint8)``,
concatenated in name order. So the byte layout is fully determined by the request, and a bucket's
buffer always has exactly the size the server expects to receive.

Buffers (performance.md "Weight sync"): every tensor is written with one ``copy_`` (casting to the
wire dtype and gathering strided views on the way) straight into its place in the bucket's buffer.
With a :class:`BufferPool` the buffers are preallocated once and reused: a pool of 3 holds one bucket
on the wire, one queued, one filling. A fresh 512 MiB buffer costs page faults on every first touch
(0.17-0.29 s on the 2-core CPU machine against 0.045 s for a reused one), so reuse matters as much as
avoiding the copy.

The rule that keeps this correct: a buffer goes back to the pool (:meth:`Lease.release`) only after
the broadcast that reads it has COMPLETED, or when it was never handed to a broadcast. A buffer whose
broadcast may still be running (a timed-out or abandoned broadcast) is :meth:`Lease.discard`-ed: the
pool forgets it and allocates another, and the stuck operation keeps the old memory alive.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

__all__ = ["Bucket", "BucketPacker", "BufferPool", "Lease", "dtype_name", "unpack", "validate_bucket"]

WEIGHT_DTYPES = ("float32", "bfloat16", "float16")


def dtype_name(dtype: torch.dtype) -> str:
    """torch attribute name, as SGLang's request expects ("float32", "bfloat16")."""
    return str(dtype).removeprefix("torch.")


class Lease:
    """One pool buffer lent to one bucket. Exactly one of :meth:`release` / :meth:`discard` takes
    effect (later calls are no-ops), so every path may call it without double-returning a buffer."""

    def __init__(self, pool: "BufferPool", buffer: torch.Tensor):
        self.pool, self.buffer = pool, buffer
        self.state = "held"  # -> "released" (back in the pool) | "discarded" (forgotten)

    def release(self) -> None:
        """The buffer is no longer read by anything (its broadcast completed, or it was never sent)."""
        self.pool._give_back(self, reuse=True)

    def discard(self) -> None:
        """A broadcast of the buffer may still be reading it: never lend it again."""
        self.pool._give_back(self, reuse=False)


class BufferPool:
    """At most ``capacity`` uint8 buffers of at least ``buffer_bytes`` each on ``device``, allocated on
    first need and lent out by :meth:`acquire` (blocks while all are lent). A request larger than a
    buffer (a tensor bigger than a bucket) replaces one free buffer by a big enough one."""

    def __init__(self, buffer_bytes: int, capacity: int = 3, device: torch.device | str = "cpu"):
        if capacity < 1 or buffer_bytes < 1:
            raise ValueError(f"a buffer pool needs capacity >= 1 and buffer_bytes >= 1 (got {capacity}, {buffer_bytes})")
        self.buffer_bytes, self.capacity, self.device = buffer_bytes, capacity, torch.device(device)
        self._cond = threading.Condition()
        self._free: list[torch.Tensor] = []
        self._live = 0  # allocated and not discarded: free + lent
        self.allocations = 0  # buffers ever allocated (tests, diagnostics)
        self.wait_s = 0.0  # time acquire() spent blocked on lent buffers

    def acquire(self, nbytes: int, timeout_s: float | None = None) -> Lease:
        """A lease on a buffer of at least ``nbytes`` (its first ``nbytes`` are the caller's to fill)."""
        t0 = time.perf_counter()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while not self._free and self._live >= self.capacity:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"no weight-sync bucket buffer came back within {timeout_s:.0f} s "
                                       f"({self.capacity} lent)")
                self._cond.wait(left)
            self.wait_s += time.perf_counter() - t0
            # Free buffers are chosen and taken out BY POSITION. Never ``list.remove(tensor)``: it compares
            # the buffers before it with ``==``, elementwise, so it raised ("The size of tensor a (102400)
            # must match the size of tensor b (65536)") whenever the chosen one was not the first free one.
            sizes = [b.numel() for b in self._free]
            fits = [i for i, n in enumerate(sizes) if n >= nbytes]
            if fits:
                buf = self._free.pop(min(fits, key=sizes.__getitem__))  # the smallest that fits
            else:
                if self._free:  # all free ones too small: replace the smallest
                    self._free.pop(min(range(len(sizes)), key=sizes.__getitem__))
                    self._live -= 1
                buf = torch.empty(max(nbytes, self.buffer_bytes), dtype=torch.uint8, device=self.device)
                self._live += 1
                self.allocations += 1
            return Lease(self, buf)

    def _give_back(self, lease: Lease, reuse: bool) -> None:
        with self._cond:
            if lease.state != "held":
                return
            lease.state = "released" if reuse else "discarded"
            if reuse:
                self._free.append(lease.buffer)
            else:
                self._live -= 1
            self._cond.notify_all()

    @property
    def lent(self) -> int:
        with self._cond:
            return self._live - len(self._free)

    def clear(self) -> None:
        """Drop the free buffers (their memory goes back); lent ones are untouched."""
        with self._cond:
            self._live -= len(self._free)
            self._free.clear()


@dataclass
class Bucket:
    index: int
    names: list[str]
    dtypes: list[str]
    shapes: list[list[int]]
    data: torch.Tensor  # [nbytes] uint8, contiguous
    lease: Lease | None = None  # the pool buffer ``data`` lives in (None: ``data`` owns its memory)

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    def release(self) -> None:
        """Nothing reads ``data`` any more: its buffer may be refilled."""
        if self.lease is not None:
            self.lease.release()

    def discard(self) -> None:
        """A broadcast may still read ``data``: its buffer must never be refilled."""
        if self.lease is not None:
            self.lease.discard()


@dataclass
class BucketPacker:
    """Collects ``(name, tensor)`` into buckets of at most ``bucket_bytes`` and hands each full one to
    ``emit``. A tensor larger than a bucket travels alone. ``dtype`` casts on the way (None: as is).

    Each tensor is copied into the bucket's buffer when it is added, so ``add`` may be given views of
    live parameters (they are not referenced afterwards). With ``pool`` the buffers come from it and
    ``emit``'s receiver must call ``bucket.release()`` / ``bucket.discard()``; without one each bucket
    gets a buffer of its own (exactly its size)."""

    bucket_bytes: int
    emit: Callable[[Bucket], None]
    dtype: torch.dtype | None = None
    device: torch.device | str = "cpu"
    pool: BufferPool | None = None
    _names: list[str] = field(default_factory=list)
    _dtypes: list[str] = field(default_factory=list)
    _shapes: list[list[int]] = field(default_factory=list)
    _pending: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # no pool: (offset, tensor)
    _lease: Lease | None = None
    _bytes: int = 0
    _count: int = 0
    total_bytes: int = 0

    def __post_init__(self):
        if self.bucket_bytes < 1:
            raise ValueError(f"bucket_bytes must be >= 1 (got {self.bucket_bytes})")

    def add(self, name: str, tensor: torch.Tensor) -> None:
        tensor = tensor.detach()
        dtype = self.dtype if self.dtype is not None else tensor.dtype
        nbytes = tensor.numel() * dtype.itemsize
        if self._names and self._bytes + nbytes > self.bucket_bytes:
            self.flush()
        if self.pool is not None:
            if self._lease is None:
                self._lease = self.pool.acquire(max(nbytes, self.bucket_bytes))
            _write(self._lease.buffer, self._bytes, nbytes, tensor, dtype)
        else:  # sizes are known only at flush: keep the tensor (a cast copy, or as given) until then
            self._pending.append((self._bytes, tensor if dtype == tensor.dtype else tensor.to(dtype)))
        self._names.append(name)
        self._dtypes.append(dtype_name(dtype))
        self._shapes.append(list(tensor.shape))
        self._bytes += nbytes

    def flush(self) -> None:
        if not self._names:
            return
        if self.pool is not None:
            lease, data = self._lease, self._lease.buffer[:self._bytes]
        else:
            lease, data = None, torch.empty(self._bytes, dtype=torch.uint8, device=self.device)
            for offset, t in self._pending:
                _write(data, offset, t.numel() * t.element_size(), t, t.dtype)
        bucket = Bucket(self._count, self._names, self._dtypes, self._shapes, data, lease)
        self._names, self._dtypes, self._shapes, self._pending = [], [], [], []
        self._lease, self._bytes = None, 0
        self._count += 1
        self.total_bytes += bucket.nbytes
        self.emit(bucket)

    def abandon(self) -> None:
        """Drop a half-filled bucket that will never be emitted (its buffer was never sent)."""
        if self._lease is not None:
            self._lease.release()
        self._names, self._dtypes, self._shapes, self._pending = [], [], [], []
        self._lease, self._bytes = None, 0

    @property
    def buckets_emitted(self) -> int:
        return self._count


def _write(buf: torch.Tensor, offset: int, nbytes: int, tensor: torch.Tensor, dtype: torch.dtype) -> None:
    """``buf[offset:offset + nbytes]`` = the bytes of ``tensor`` in ``dtype``, row-major: ONE copy_
    (cast and strided gather included) when the offset is aligned for ``dtype``."""
    region = buf[offset:offset + nbytes]
    if nbytes == 0:
        return
    if offset % dtype.itemsize == 0:
        region.view(dtype).view(tensor.shape).copy_(tensor)
    else:  # mixed dtypes leave an odd offset (e.g. a bf16 tensor of odd size before a float32 one)
        region.copy_(tensor.to(dtype).contiguous().reshape(-1).view(torch.uint8))


def unpack(bucket: Bucket) -> dict[str, torch.Tensor]:
    """The inverse of packing (what the server does); used by tests and the benchmark."""
    out, offset = {}, 0
    for name, dt, shape in zip(bucket.names, bucket.dtypes, bucket.shapes):
        dtype = getattr(torch, dt)
        n = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
        out[name] = bucket.data[offset:offset + n].clone().view(dtype).reshape(shape)  # clone: alignment
        offset += n
    if offset != bucket.nbytes:
        raise ValueError(f"bucket {bucket.index}: {bucket.nbytes} bytes but the layout covers {offset}")
    return out


def validate_bucket(bucket: Bucket, expected_shapes: dict[str, tuple[int, ...]] | None = None) -> None:
    """Refuse, before anything is sent, a bucket the server would mis-load: an unknown name, a shape
    that is not the model's, a non-float dtype (SGLang casts silently on copy), or a buffer whose size
    does not match its own layout. Raises ValueError (one line)."""
    where = f"bucket {bucket.index}"
    total = 0
    for name, dt, shape in zip(bucket.names, bucket.dtypes, bucket.shapes, strict=True):
        if dt not in WEIGHT_DTYPES:
            raise ValueError(f"{where}: {name} has dtype {dt}; weights must be one of {', '.join(WEIGHT_DTYPES)}")
        if expected_shapes is not None:
            if name not in expected_shapes:
                raise ValueError(f"{where}: {name} is not a tensor of the model (check the HF name mapping)")
            if tuple(shape) != tuple(expected_shapes[name]):
                raise ValueError(f"{where}: {name} has shape {list(shape)} but the model's is "
                                 f"{list(expected_shapes[name])}")
        total += int(torch.Size(shape).numel()) * torch.empty((), dtype=getattr(torch, dt)).element_size()
    if total != bucket.nbytes:
        raise ValueError(f"{where}: the buffer has {bucket.nbytes} bytes but its names/dtypes/shapes describe {total}")
