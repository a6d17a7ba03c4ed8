"""On-disk pieces of a checkpoint: durable writes, the manifest, and the trainer-state file.

Manifest (``manifest.json``, written last, so its presence means "every other file was complete")::

    {"format": 1, "step": 40, "world_size": 8, "checksum_max_bytes": 67108864,
     "files": {"model/__0_0.distcp": {"size": 123, "sha256": null},
               "trainer_state.json": {"size": 456, "sha256": "ab12..."}, ...}}

Every file is listed with its size. Files up to ``checksum_max_bytes`` (64 MiB by default) also carry a
sha256; bigger ones (the model and optimizer shards, gigabytes each at 14B) are checked by size only,
because hashing hundreds of GB would add minutes to every save and every resume. A truncated or missing
shard is still caught by the size; silent bit rot inside a shard is not (that is the file system's job).

Trainer state is JSON when it is made only of JSON-native values (dict with str keys, list, str, int,
float, bool, None -- Python's float repr round-trips exactly, NaN included), so it stays readable with
``cat``; anything else (tensors, tuples) goes to ``trainer_state.pt``, loaded with ``weights_only=True``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from dcpo_mcore.errors import UserValueError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
CHECKSUM_MAX_BYTES = 64 << 20
STATE_JSON, STATE_PT = "trainer_state.json", "trainer_state.pt"


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (created / renamed children) durable: a rename is only as safe as this."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    """Write and fsync a file (its directory is fsynced by whoever publishes it)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def replace_atomic(path: Path, data: bytes) -> None:
    """Readers see the old content or the new one, never a mix: write a sibling, then os.replace."""
    tmp = path.with_name(f".{path.name}.tmp")
    write_durable(tmp, data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (deepest first), ``root`` included."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fsync_file(Path(dirpath, name))
        fsync_dir(Path(dirpath))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def build_manifest(root: Path, step: int, world_size: int, checksum_max_bytes: int = CHECKSUM_MAX_BYTES) -> dict:
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST:
            continue
        size = path.stat().st_size
        files[rel] = {"size": size, "sha256": sha256_file(path) if size <= checksum_max_bytes else None}
    return {"format": MANIFEST_FORMAT, "step": step, "world_size": world_size,
            "checksum_max_bytes": checksum_max_bytes, "files": files}


def read_manifest(ckpt: Path) -> dict:
    """The parsed manifest; raises ValueError with a short reason (the caller adds path and advice)."""
    path = ckpt / MANIFEST
    if not path.is_file():
        raise UserValueError("no manifest.json (the save did not finish)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserValueError(f"manifest.json is unreadable ({type(exc).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT \
            or not isinstance(manifest.get("files"), dict):
        raise UserValueError(f"manifest.json is not a format-{MANIFEST_FORMAT} manifest")
    return manifest


def check_manifest(ckpt: Path) -> str | None:
    """None if the checkpoint is complete, else the first problem found, as a short phrase."""
    try:
        manifest = read_manifest(ckpt)
    except ValueError as exc:
        return str(exc)
    for rel, entry in manifest["files"].items():
        path = ckpt / rel
        try:
            size = path.stat().st_size
        except OSError:
            return f"{rel} is missing"
        if size != entry.get("size"):
            return f"{rel} has {size} bytes, the manifest says {entry.get('size')} (truncated?)"
        if entry.get("sha256") and sha256_file(path) != entry["sha256"]:
            return f"{rel} does not match its sha256 (corrupt)"
    return None


def _is_plain(obj) -> bool:
    """True when a JSON round trip gives back exactly ``obj`` (same types, same values)."""
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return True
    if isinstance(obj, list):
        return all(_is_plain(v) for v in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in obj.items())
    return False


def _unloadable(obj, where: str = "trainer_state") -> str | None:
    """Where ``obj`` holds something ``torch.load(weights_only=True)`` would refuse, or None.

    Checked at save time: finding out at resume time, after the run died, is too late.
    """
    if obj is None or isinstance(obj, (str, bool, int, float, torch.Tensor)):
        return None
    if isinstance(obj, (list, tuple)):
        return next((w for i, v in enumerate(obj) if (w := _unloadable(v, f"{where}[{i}]"))), None)
    if isinstance(obj, dict):
        return next((w for k, v in obj.items() if (w := _unloadable(k, f"{where} key {k!r}")
                                                   or _unloadable(v, f"{where}[{k!r}]"))), None)
    return f"{where} is a {type(obj).__name__}"


def write_trainer_state(ckpt: Path, state: dict) -> Path:
    if _is_plain(state):
        path = ckpt / STATE_JSON
        write_durable(path, json.dumps(state, indent=1).encode())
    else:
        bad = _unloadable(state)
        if bad is not None:
            raise TypeError(f"{bad}: keep trainer state to dicts, lists, tuples, numbers, strings and tensors "
                            "(call .state_dict() on objects)")
        path = ckpt / STATE_PT
        torch.save(state, path)
        fsync_file(path)
    return path


def read_trainer_state(ckpt: Path) -> dict:
    if (ckpt / STATE_JSON).is_file():
        return json.loads((ckpt / STATE_JSON).read_text())
    return torch.load(ckpt / STATE_PT, map_location="cpu", weights_only=True)
