"""What a converted checkpoint directory holds besides the Megatron tensors, and its integrity check.

Layout of a ``dcpo-convert hf-to-mcore`` output directory::

    OUT/
      metadata.json, .metadata, common.pt, __R_K.distcp   megatron dist_checkpointing (torch_dist)
      dcpo_checkpoint.json                                 this module's CheckpointMeta (below)
      hf/config.json, hf/tokenizer*.json, ...              the HF config and tokenizer files, verbatim

The model state is saved as ``{"model": chunk.sharded_state_dict()}`` (one chunk) or
``{"model0": ..., "model1": ...}`` (virtual pipeline stages), as Megatron-LM does; the tensors are keyed
by their global megatron names, so any TP/PP/VPP layout can load them (see :mod:`.rank_ops`).
``hf/`` is enough to rebuild the model (``ArchSpec.from_hf_config(OUT / "hf")``) and to export it, so
neither export nor the RL trainer needs the original HF directory.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ConvertError

META_NAME = "dcpo_checkpoint.json"
HF_META_DIR = "hf"
FORMAT = "dcpo-mcore/megatron-model"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CheckpointMeta:
    """Written beside the Megatron tensors; everything needed to rebuild and export the model."""

    family: str  # ArchSpec.family of hf/config.json
    params_dtype: str  # "bfloat16", "float32", ... (the dtype of every saved parameter)
    vocab_size: int  # the HF vocabulary (real rows); megatron pads to a multiple of 128*TP
    padded_vocab_size: int  # rows of the embedding / output layer as saved (at the saved TP)
    tp: int  # layout it was written at (any other loads it too)
    pp: int
    vpp: int | None
    num_hf_tensors: int
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    megatron_core: str = ""
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    source: str = ""  # where the weights came from (an HF dir), for humans


def write_meta(ckpt_dir: Path, meta: CheckpointMeta) -> None:
    (Path(ckpt_dir) / META_NAME).write_text(json.dumps(asdict(meta), indent=2) + "\n")


def read_meta(ckpt_dir: str | Path) -> CheckpointMeta:
    """The checkpoint's metadata, with a one-line :class:`ConvertError` for anything unusable."""
    path = Path(ckpt_dir) / META_NAME
    if not path.is_file():
        raise ConvertError(f"{ckpt_dir} is not a dcpo-convert checkpoint (no {META_NAME}); "
                           "create one with `dcpo-convert hf-to-mcore`")
    try:
        raw = json.loads(path.read_text())
        meta = CheckpointMeta(**raw)
    except (OSError, ValueError, TypeError) as exc:
        raise ConvertError(f"corrupt checkpoint metadata {path}: {exc}") from None
    if meta.format != FORMAT or meta.format_version > FORMAT_VERSION:
        raise ConvertError(f"{path} has format {meta.format!r} v{meta.format_version}; this dcpo-convert "
                           f"reads {FORMAT!r} up to v{FORMAT_VERSION}")
    return meta


def check_checkpoint_dir(ckpt_dir: str | Path) -> tuple[CheckpointMeta, object]:
    """Refuse a missing, incomplete or truncated checkpoint before any rank is started.

    Megatron writes its ``metadata.json`` last, so a save that died half-way has none; every tensor
    chunk listed in the torch DCP ``.metadata`` must lie inside its ``.distcp`` file (a truncated or
    deleted file fails here instead of as a stack trace inside a rank). Returns our metadata and the torch
    DCP one (read once; the shape checks use it too).
    """
    d = Path(ckpt_dir)
    if not d.is_dir():
        raise ConvertError(f"checkpoint directory {d} does not exist")
    meta = read_meta(d)
    if not (d / HF_META_DIR / "config.json").is_file():
        raise ConvertError(f"checkpoint {d} is incomplete: {HF_META_DIR}/config.json is missing")
    try:
        backend = json.loads((d / "metadata.json").read_text()).get("sharded_backend")
    except (OSError, ValueError, AttributeError):
        raise ConvertError(f"checkpoint {d} is incomplete: no readable metadata.json "
                           "(the Megatron save did not finish)") from None
    if backend != "torch_dist":
        raise ConvertError(f"checkpoint {d} uses sharded backend {backend!r}; only torch_dist is supported")
    return meta, check_dcp_files(d)


def check_dcp_files(d: Path):
    """Every chunk the torch DCP ``.metadata`` lists lies inside its file; returns that metadata."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        dcp_meta = FileSystemReader(str(d)).read_metadata()
        storage = dcp_meta.storage_data
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise ConvertError(f"checkpoint {d} is corrupt: cannot read .metadata ({type(exc).__name__})") from None
    needed: dict[str, int] = {}
    for info in storage.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for rel, end in sorted(needed.items()):
        f = d / rel
        if not f.is_file():
            raise ConvertError(f"checkpoint {d} is incomplete: {rel} is missing")
        if f.stat().st_size < end:
            raise ConvertError(f"checkpoint {d} is truncated: {rel} has {f.stat().st_size} bytes, "
                               f"its tensors need {end}")
    return dcp_meta
