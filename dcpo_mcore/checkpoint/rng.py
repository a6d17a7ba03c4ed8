"""Capture and restore every random number generator a rank uses (docs/architecture.md [conv-atomic-checkpoints]).

Why all of them: a resumed run must draw the same numbers the uninterrupted run would have drawn --
python ``random`` (sampling helpers, shuffles), numpy (data tools), the torch CPU generator, the CUDA
generators, and megatron's RNG tracker, which keeps *named* device states (the model-parallel one
differs per TP rank and drives dropout inside tensor-parallel regions; ``fork()`` swaps it in and out
of the device generator). On a CPU machine ``dcpo_mcore.engine.cpu_compat`` maps the device generator
onto the CPU one, so the tracker's states are CPU generator states and everything here still applies.

The state is a dict of plain Python values and CPU tensors, so ``torch.load(weights_only=True)`` reads
it back (no pickled code in a checkpoint). Each rank saves its own state; see
:func:`restore_rng_state` for the ``host_only`` mode used when the world size changed.
"""
from __future__ import annotations

import random
import sys

import torch

from dcpo_mcore.errors import UserValueError

_TRACKER_MODULE = "megatron.core.tensor_parallel.random"
FORMAT = 1


def capture_rng_state() -> dict:
    """This rank's generators, as plain values and cloned CPU tensors (later draws do not alias it)."""
    state: dict = {"format": FORMAT, "python": random.getstate(), "torch_cpu": torch.get_rng_state().clone()}
    np = sys.modules.get("numpy")  # only if something imported numpy: do not pull it in for nothing
    if np is not None:
        name, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
        state["numpy"] = {"name": str(name), "key": torch.from_numpy(key.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "gauss": float(gauss)}
    if torch.cuda.is_available():
        state["cuda"] = [s.clone() for s in torch.cuda.get_rng_state_all()]
    tracker = _live_tracker()
    if tracker is not None:
        state["tracker"] = {name: _state_tensor(s) for name, s in tracker.get_states().items()}
    return state


def restore_rng_state(state: dict, host_only: bool = False) -> None:
    """Put the generators back as :func:`capture_rng_state` found them.

    ``host_only``: restore python / numpy / torch CPU only and keep the device generators and the
    megatron tracker as the engine seeded them. Used when resuming at another world size, where this
    rank restores *rank 0's* state: host generators must agree across ranks anyway (same shuffles),
    but copying rank 0's tracker onto every rank would give all TP ranks the same dropout masks.
    """
    if state.get("format") != FORMAT:
        raise UserValueError(f"RNG state format {state.get('format')!r} is not {FORMAT}; it was written by "
                         "another version of dcpo-mcore")
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch_cpu"].clone())
    if "numpy" in state:
        import numpy as np

        n = state["numpy"]
        np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if host_only:
        return
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        if len(saved) != torch.cuda.device_count():
            raise UserValueError(f"RNG state has {len(saved)} CUDA generators, this process sees "
                             f"{torch.cuda.device_count()} devices; resume with the same devices per rank")
        torch.cuda.set_rng_state_all([s.clone() for s in saved])
    if "tracker" in state:
        _restore_tracker(state["tracker"])


def _live_tracker():
    """Megatron's tracker if megatron is in use and the tracker exists; importing megatron costs
    seconds, so a process that never imported it has no tracker state to save."""
    module = sys.modules.get(_TRACKER_MODULE)
    if module is None or not getattr(module, "_CUDA_RNG_STATE_TRACKER_INITIALIZED", False):
        return None
    return module.get_cuda_rng_tracker()


def _state_tensor(s) -> torch.Tensor:
    # A cudagraph-safe tracker keeps torch.Generator objects rather than state tensors.
    return s.get_state() if isinstance(s, torch.Generator) else s.detach().cpu().clone()


def _restore_tracker(saved: dict[str, torch.Tensor]) -> None:
    import importlib

    module = importlib.import_module(_TRACKER_MODULE)
    tracker = module.get_cuda_rng_tracker()
    live = tracker.get_states()
    if live and all(isinstance(s, torch.Generator) for s in live.values()):
        for name, t in saved.items():  # cudagraph-safe tracker: keep its generator objects
            live[name].set_state(t.clone())
        return
    tracker.set_states({name: t.clone() for name, t in saved.items()})
