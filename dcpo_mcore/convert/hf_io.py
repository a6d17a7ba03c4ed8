"""Hugging Face checkpoint files: lazy reading, streaming writing, and the non-weight files.

Reading (:class:`HfWeights`): the safetensors headers are parsed once (names, dtypes, shapes, no tensor
data), so a checkpoint is validated against the architecture before any process is started; tensors are
then read one at a time with ``safe_open`` when a rank asks for them -- never the whole model.

Writing (:class:`SafetensorsStreamWriter`): the shard layout is planned up front from the known HF names,
shapes and dtype (:func:`plan_shards`), so each shard's header can be written before its tensors arrive,
and every tensor goes to disk the moment it is produced. Peak memory is one tensor, not one shard.
The files are plain safetensors (8-byte little-endian header length, JSON header, raw data), with
``model.safetensors.index.json`` when there is more than one shard, as ``save_pretrained`` writes them.
"""
from __future__ import annotations

import json
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from dcpo_mcore.engine.hf_arch import ArchSpec
from dcpo_mcore.engine.hf_mapping import MappingError, check_hf_names, expected_hf_shapes

from .errors import ConvertError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# Weight files (any format) are never copied as "metadata"; everything else at the top level is
# (config.json, generation_config.json, tokenizer files, chat templates, ...).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".gguf", ".distcp")
_WEIGHT_INDEXES = (INDEX_NAME, "pytorch_model.bin.index.json")
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
           "U8": torch.uint8, "BOOL": torch.bool}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 2**20  # a header larger than this is a corrupt file, not a real checkpoint


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """``{name: TensorInfo}`` from a safetensors header, without reading any tensor data."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ConvertError(f"{path} is not a safetensors file (truncated header)")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER:
                raise ConvertError(f"{path} is not a safetensors file (header length {n})")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ConvertError(f"cannot read safetensors file {path}: {exc}") from None
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry.get("dtype") not in _DTYPES:
            raise ConvertError(f"{path}: tensor {name!r} has unsupported dtype {entry.get('dtype')!r}")
        out[name] = TensorInfo(path, _DTYPES[entry["dtype"]], tuple(entry["shape"]))
    return out


class HfWeights:
    """The tensors of an HF checkpoint directory, read lazily; use as a context manager."""

    def __init__(self, hf_dir: str | Path):
        self.dir = Path(hf_dir)
        self.infos = _scan(self.dir)
        self._handles: dict[Path, object] = {}

    def get(self, name: str) -> torch.Tensor:
        """One tensor, read from disk now (KeyError if the checkpoint has no such tensor)."""
        from safetensors import safe_open

        info = self.infos[name]
        if info.file not in self._handles:
            self._handles[info.file] = safe_open(str(info.file), framework="pt", device="cpu")
        return self._handles[info.file].get_tensor(name)

    def close(self) -> None:
        self._handles.clear()  # safe_open handles close (and unmap) when dropped

    def __enter__(self) -> "HfWeights":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _scan(hf_dir: Path) -> dict[str, TensorInfo]:
    if not hf_dir.is_dir():
        raise ConvertError(f"HF checkpoint directory {hf_dir} does not exist")
    index = hf_dir / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConvertError(f"cannot read {index}: {exc!r}") from None
        files = sorted({hf_dir / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ConvertError(f"{index} names missing shard file(s): {', '.join(missing[:3])}")
    else:
        files = sorted(hf_dir.glob("*.safetensors"))
        if not files:
            raise ConvertError(f"no *.safetensors files in {hf_dir}; re-save the model with "
                               "save_pretrained(..., safe_serialization=True)")
    infos: dict[str, TensorInfo] = {}
    for f in files:
        for name, info in read_safetensors_header(f).items():
            if name in infos:
                raise ConvertError(f"tensor {name!r} appears in both {infos[name].file.name} and {f.name}")
            infos[name] = info
    return infos


def check_weights(infos: dict[str, TensorInfo], arch: ArchSpec) -> torch.dtype:
    """Names and shapes must be exactly the architecture's; returns the one dtype they share."""
    try:
        check_hf_names(infos, arch)
    except MappingError as exc:
        raise ConvertError(str(exc)) from None
    expected = expected_hf_shapes(arch)
    for name, shape in expected.items():
        if infos[name].shape != shape:
            raise ConvertError(f"shape mismatch for HF tensor {name!r}: the config implies {shape}, "
                               f"the file has {infos[name].shape}")
    dtypes = {infos[n].dtype for n in expected}
    if len(dtypes) != 1:
        raise ConvertError(f"HF tensors mix dtypes {sorted(map(str, dtypes))}; a bit-exact conversion "
                           "needs one dtype (cast the checkpoint first)")
    return dtypes.pop()


def copy_meta_files(src: Path, dst: Path) -> list[str]:
    """Copy config, generation config and tokenizer files (every top-level non-weight file)."""
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for p in sorted(src.iterdir()):
        if (p.is_file() and not p.name.startswith(".") and not p.name.endswith(_WEIGHT_SUFFIXES)
                and p.name not in _WEIGHT_INDEXES):
            shutil.copy2(p, dst / p.name)
            copied.append(p.name)
    if "config.json" not in copied:
        raise ConvertError(f"{src} has no config.json")
    return copied


# ---------------------------------------------------------------------------------------------
# streaming writer


def parse_size(text: str) -> int:
    """'2GB', '500MB', '100KB', '123' -> bytes (decimal units, as transformers' max_shard_size)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*", text, re.IGNORECASE)
    if not m:
        raise ConvertError(f"cannot parse size {text!r}; use e.g. 2GB, 500MB or a number of bytes")
    unit = m.group(2).upper().rstrip("B")
    power = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit.rstrip("I")]
    base = 1024 if unit.endswith("I") else 1000
    size = int(float(m.group(1)) * base**power)
    if size < 1:
        raise ConvertError(f"size {text!r} must be positive")
    return size


def plan_shards(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, max_bytes: int) -> list[list[str]]:
    """Split names (in order) into consecutive shards of at most ``max_bytes`` (a bigger tensor alone)."""
    item = torch.empty((), dtype=dtype).element_size()
    shards: list[list[str]] = [[]]
    used = 0
    for name, shape in shapes.items():
        size = item * _numel(shape)
        if shards[-1] and used + size > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def shard_file_names(n: int) -> list[str]:
    return [SINGLE_NAME] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


class SafetensorsStreamWriter:
    """Write HF tensors, in plan order, straight into their safetensors shards (one tensor in memory)."""

    def __init__(self, out_dir: Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, max_bytes: int):
        self.out_dir, self.shapes, self.dtype = Path(out_dir), shapes, dtype
        self.plan = plan_shards(shapes, dtype, max_bytes)
        self.files = shard_file_names(len(self.plan))
        self._order = [(i, n) for i, names in enumerate(self.plan) for n in names]
        self._next = 0
        self._fh = None
        self.bytes_written = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self._order):
            raise RuntimeError(f"unexpected extra tensor {name!r}: all {len(self._order)} were written")
        shard, want = self._order[self._next]
        if name != want or tuple(tensor.shape) != self.shapes[name] or tensor.dtype != self.dtype:
            raise RuntimeError(f"tensor stream out of plan: got {name!r} {tuple(tensor.shape)} {tensor.dtype}, "
                               f"expected {want!r} {self.shapes[want]} {self.dtype}")
        if self._fh is None:
            self._open(shard)
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        self._fh.write(memoryview(data))
        self.bytes_written += data.nbytes
        self._next += 1
        if self._next == len(self._order) or self._order[self._next][0] != shard:
            self._fh.close()
            self._fh = None

    def _open(self, shard: int) -> None:
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        item = torch.empty((), dtype=self.dtype).element_size()
        for name in self.plan[shard]:
            size = item * _numel(self.shapes[name])
            header[name] = {"dtype": _DTYPE_NAMES[self.dtype], "shape": list(self.shapes[name]),
                            "data_offsets": [offset, offset + size]}
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned, as safetensors writes it
        self._fh = open(self.out_dir / self.files[shard], "wb")
        self._fh.write(struct.pack("<Q", len(raw)) + raw)

    def finish(self) -> None:
        """Check every planned tensor arrived; write the index when there are several shards."""
        if self._next != len(self._order):
            raise RuntimeError(f"only {self._next} of {len(self._order)} tensors were written")
        if len(self.files) > 1:
            item = torch.empty((), dtype=self.dtype).element_size()
            index = {"metadata": {"total_size": sum(item * _numel(s) for s in self.shapes.values())},
                     "weight_map": {n: self.files[i] for i, n in self._order}}
            (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
