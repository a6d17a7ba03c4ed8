"""Flattened weight buckets: SGLang's ``load_format="flattened_bucket"`` (platform_notes.md §2).

The server receives ONE uint8 buffer per ``/update_weights_from_distributed`` call and cuts it back
into tensors from the request's names, dtypes and shapes: each tensor ``flatten().view(uint8)``,
concatenated in name order. So the byte layout is fully determined by the request, and a bucket's
buffer always has exactly the size the server expects to receive.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

__all__ = ["Bucket", "BucketPacker", "dtype_name", "unpack", "validate_bucket"]

WEIGHT_DTYPES = ("float32", "bfloat16", "float16")


def dtype_name(dtype: torch.dtype) -> str:
    """torch attribute name, as SGLang's request expects ("float32", "bfloat16")."""
    return str(dtype).removeprefix("torch.")


@dataclass
class Bucket:
    index: int
    names: list[str]
    dtypes: list[str]
    shapes: list[list[int]]
    data: torch.Tensor  # [nbytes] uint8, contiguous

    @property
    def nbytes(self) -> int:
        return self.data.numel()


@dataclass
class BucketPacker:
    """Collects ``(name, tensor)`` into buckets of at most ``bucket_bytes`` and hands each full one to
    ``emit``. A tensor larger than a bucket travels alone. ``dtype`` casts on the way (None: as is)."""

    bucket_bytes: int
    emit: Callable[[Bucket], None]
    dtype: torch.dtype | None = None
    device: torch.device | str = "cpu"
    _tensors: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    _bytes: int = 0
    _count: int = 0
    total_bytes: int = 0

    def __post_init__(self):
        if self.bucket_bytes < 1:
            raise ValueError(f"bucket_bytes must be >= 1 (got {self.bucket_bytes})")

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if self.dtype is not None and tensor.dtype != self.dtype:
            tensor = tensor.to(self.dtype)
        nbytes = tensor.numel() * tensor.element_size()
        if self._tensors and self._bytes + nbytes > self.bucket_bytes:
            self.flush()
        self._tensors.append((name, tensor))
        self._bytes += nbytes

    def flush(self) -> None:
        if not self._tensors:
            return
        names = [n for n, _ in self._tensors]
        tensors = [t for _, t in self._tensors]
        data = torch.cat([t.detach().contiguous().reshape(-1).view(torch.uint8).to(self.device) for t in tensors])
        bucket = Bucket(self._count, names, [dtype_name(t.dtype) for t in tensors],
                        [list(t.shape) for t in tensors], data)
        self._tensors, self._bytes = [], 0
        self._count += 1
        self.total_bytes += bucket.nbytes
        self.emit(bucket)

    @property
    def buckets_emitted(self) -> int:
        return self._count


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
