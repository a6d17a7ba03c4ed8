"""CPU compatibility shim for the SGLang server (tied to ``pins.SGLANG_VERSION``, 0.5.23).

SGLang imports two packages that cannot work beside a CPU-only torch:

* ``sgl_kernel``: no CPU build exists on PyPI and the CUDA one needs libcuda. On the
  ``torch_native`` attention path that our CPU launch flags select, the names SGLang imports from
  it are never *called* for dense Qwen2/Qwen3/Llama models, so ``sgl_kernel/`` here defines exactly
  those names as functions that raise if one ever is (a loud failure, never a silent wrong answer).
  A name outside the list raises ImportError, so SGLang's own ``try/except ImportError`` fallbacks
  still take effect.
* ``torchvision``: imported unconditionally by SGLang's multimodal processors; PyPI's build fails
  beside the CPU torch (``operator torchvision::nms does not exist``). ``torchvision/`` here is an
  inert stub: any submodule imports, any attribute is a placeholder class, and *calling* one raises.
  Text-only models never call it. It ships no dist-info, so transformers still reports torchvision
  as unavailable.

The shim is applied ONLY to a server process that runs on CPU, by putting :data:`SHIM_DIR` first on
that process's ``PYTHONPATH`` (see :func:`shim_env`); nothing in the trainer process imports it.
The stubbed names were read from SGLang 0.5.23; :func:`check_sglang_version` refuses other versions.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from ..pins import SGLANG_VERSION

__all__ = ["SHIM_DIR", "SHIM_FOR_SGLANG", "check_sglang_version", "shim_env"]

SHIM_DIR = Path(__file__).resolve().parent
SHIM_FOR_SGLANG = SGLANG_VERSION


def check_sglang_version(installed: str | None) -> None:
    """Raise RuntimeError (one line: cause and fix) unless ``installed`` is the pinned version."""
    if installed != SHIM_FOR_SGLANG:
        raise RuntimeError(
            f"the CPU compatibility shim is tied to sglang=={SHIM_FOR_SGLANG}, but "
            f"{'no sglang' if installed is None else 'sglang==' + installed} is installed; run "
            f"`bash tools/setup_sglang.sh <venv>` (or re-check the stubs in {SHIM_DIR} and bump pins.py)")


def shim_env(env: Mapping[str, str]) -> dict[str, str]:
    """Return a copy of ``env`` with the shim directory first on ``PYTHONPATH``."""
    out = dict(env)
    rest = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(SHIM_DIR)]
    out["PYTHONPATH"] = os.pathsep.join([str(SHIM_DIR), *rest])
    return out
