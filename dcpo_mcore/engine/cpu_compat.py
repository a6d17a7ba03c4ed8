"""Run unmodified megatron-core on a CPU-only torch, over gloo.

megatron-core hard-codes CUDA in about 50 places (docs/platform.md [cpu-megatron]): `device="cuda"` factories,
`torch.cuda.current_device()` buffers, CUDA RNG state juggling in the RNG tracker and in activation
recompute, `param.type() == 'torch.cuda.FloatTensor'` asserts in the optimizer, stream/event/synchronize
calls, and a sequence-parallel assert in the plain-torch norm. Instead of forking megatron, this layer
makes those call sites behave on CPU:

1. Device RNG -> CPU RNG. `torch.cuda.{get,set}_rng_state` / `manual_seed` and megatron's
   `_set_cuda_rng_state` act on the CPU default generator, so megatron's own `CudaRNGStatesTracker`
   (seeding, `fork()`, recompute replay) works unchanged: on CPU the "device" generator IS the CPU one.
2. A `TorchFunctionMode` rewrites CUDA device arguments ("cuda", "cuda:N", ints, torch.device) to CPU on
   every torch call, makes `.cuda()` a no-op and makes `Tensor.type()` report `torch.cuda.*` names.
3. `torch.cuda.current_device`, `synchronize`, streams, events and nvtx become harmless no-ops.
4. A TorchFunctionMode is NOT active inside autograd backward (the engine runs backward nodes outside the
   Python mode stack), so custom `autograd.Function.backward`s (megatron's sequence-parallel gather/scatter
   allocate "cuda" buffers there) are re-entered into the mode by wrapping `BackwardCFunction.apply`.
5. `WrappedTorchNorm` accepts sequence parallelism: the norm is built normally and its parameters are
   tagged `sequence_parallel=True`, so `finalize_model_grads` all-reduces their grads across TP.

Apply it once per process with `apply_cpu_compat()`, only when no CUDA device is present, BEFORE any
model or optimizer is built. Tested on both supported stacks, megatron-core 0.16.1 (Python 3.11) and 0.19.2
(Python 3.12), whose patched call sites are the same; `apply_cpu_compat` warns on another version instead
of failing, and the direct tests (tests/dist/test_cpu_compat.py, run on both stacks) catch a break.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import threading

import torch
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)

TESTED_MEGATRON_VERSIONS = ("0.16.1", "0.19.2")  # requirements/cpu.txt, requirements/py312.txt
_CPU = torch.device("cpu")
_state = threading.local()
_applied = False
_apply_lock = threading.Lock()

# Tensor.type() names megatron asserts on, keyed by dtype.
_CUDA_TYPE_NAMES = {
    torch.float32: "torch.cuda.FloatTensor",
    torch.float16: "torch.cuda.HalfTensor",
    torch.bfloat16: "torch.cuda.BFloat16Tensor",
    torch.float64: "torch.cuda.DoubleTensor",
    torch.int64: "torch.cuda.LongTensor",
    torch.int32: "torch.cuda.IntTensor",
    torch.int8: "torch.cuda.CharTensor",
    torch.uint8: "torch.cuda.ByteTensor",
    torch.bool: "torch.cuda.BoolTensor",
}


def _is_cuda_device(dev) -> bool:
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.startswith("cuda")
    # A bare int means "CUDA device N" in torch factory calls; bools are ints too but never devices.
    return isinstance(dev, int) and not isinstance(dev, bool)


def _cpu_if_cuda(dev):
    return _CPU if _is_cuda_device(dev) else dev


class CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device arguments to CPU on every torch function call."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type:
            if len(args) == 1 and not kwargs:
                return _CUDA_TYPE_NAMES.get(args[0].dtype, func(*args))
            target = args[1] if len(args) > 1 else kwargs.pop("dtype")
            if isinstance(target, str):
                target = target.replace("torch.cuda.", "torch.")
            return func(args[0], target)
        if "device" in kwargs:
            kwargs["device"] = _cpu_if_cuda(kwargs["device"])
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], _CPU) + tuple(args[2:])
        return func(*args, **kwargs)


class _CpuStream:
    """Stand-in for torch.cuda.Stream: every operation is already ordered on CPU."""

    def __init__(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def wait_stream(self, other):
        pass

    def wait_event(self, event):
        pass

    def record_event(self, event=None):
        return event or _CpuEvent()

    def query(self):
        return True


class _CpuEvent:
    def __init__(self, *args, **kwargs):
        pass

    def record(self, stream=None):
        pass

    def wait(self, stream=None):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0


def _noop(name: str):
    """A fresh no-op per patched name: torch._dynamo's trace-rule map rejects one function object that is
    installed under several torch names with different rules."""

    def noop(*args, **kwargs):
        return None

    noop.__name__ = noop.__qualname__ = f"cpu_compat_noop_{name}"
    return noop


def _patch_cuda_runtime() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: 0
    cuda.set_device = _noop("set_device")
    cuda.synchronize = _noop("synchronize")
    cuda.Stream = _CpuStream
    cuda.Event = _CpuEvent
    cuda.current_stream = lambda device=None: _CpuStream()
    cuda.default_stream = lambda device=None: _CpuStream()
    cuda.stream = lambda stream=None: contextlib.nullcontext()
    cuda.nvtx.range_push = _noop("range_push")
    cuda.nvtx.range_pop = _noop("range_pop")
    # Device RNG == CPU RNG on this machine (see module docstring, point 1).
    cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    cuda.random.get_rng_state = lambda device="cuda": torch.get_rng_state()
    cuda.set_rng_state = lambda new_state, device="cuda": torch.set_rng_state(new_state)
    # Seed the CPU generator directly: torch.manual_seed itself calls torch.cuda.manual_seed_all.
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    cuda.manual_seed_all = lambda seed: torch.default_generator.manual_seed(int(seed))


def _patch_megatron_rng() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    def set_device_rng_state(new_state, device=-1, graph_safe=False):
        torch.set_rng_state(new_state)

    def get_device_rng_state(device="cuda", clone=False, graph_safe=False):
        return torch.get_rng_state()

    mrandom._set_cuda_rng_state = set_device_rng_state
    mrandom._get_cuda_rng_state = get_device_rng_state


def _patch_torch_norm_for_sequence_parallel() -> None:
    from megatron.core.transformer import torch_norm

    original_new = torch_norm.WrappedTorchNorm.__new__
    if getattr(original_new, "_dcpo_patched", False):
        return

    @functools.wraps(original_new)
    def new(cls, config, hidden_size, eps=1e-5, *args, **kwargs):
        if not config.sequence_parallel:
            return original_new(cls, config, hidden_size, eps, *args, **kwargs)
        # Build with SP off (the assert), then tag the params so finalize_model_grads all-reduces their
        # grads across the TP group: with SP each TP rank only sees its slice of the sequence.
        import dataclasses

        norm = original_new(cls, dataclasses.replace(config, sequence_parallel=False), hidden_size, eps, *args, **kwargs)
        for p in norm.parameters():
            p.sequence_parallel = True
        return norm

    new._dcpo_patched = True
    torch_norm.WrappedTorchNorm.__new__ = new


def _patch_autograd_backward() -> None:
    """Re-enter the mode inside custom autograd Function backward (point 4)."""
    from torch.autograd.function import BackwardCFunction

    original = BackwardCFunction.apply
    if getattr(original, "_dcpo_patched", False):
        return

    @functools.wraps(original)
    def apply(self, *args):
        if _mode_active():
            return original(self, *args)
        with CudaToCpuMode():
            return original(self, *args)

    apply._dcpo_patched = True
    BackwardCFunction.apply = apply


def _mode_active() -> bool:
    from torch.overrides import _get_current_function_mode_stack

    return any(isinstance(m, CudaToCpuMode) for m in _get_current_function_mode_stack())


def enter_mode_in_this_thread() -> None:
    """Push the device mode on the calling thread (the mode stack is per thread)."""
    if not _mode_active():
        mode = CudaToCpuMode()
        mode.__enter__()
        _state.mode = mode


def is_applied() -> bool:
    return _applied


def apply_cpu_compat(force: bool = False) -> bool:
    """Install the layer in this process (idempotent). Returns True if it is active.

    Does nothing when CUDA is available unless ``force`` (tests only): on a GPU machine the real CUDA
    path must run.
    """
    global _applied
    with _apply_lock:
        if torch.cuda.is_available() and not force:
            return False
        if not _applied:
            import megatron.core

            # 0.19's __version__ can carry a local suffix ("0.19.2+<git hash>"): compare the release.
            version = str(getattr(megatron.core, "__version__", "unknown")).split("+")[0]
            if version not in TESTED_MEGATRON_VERSIONS:
                log.warning("cpu_compat: megatron-core %s is untested (tested: %s)", version,
                            ", ".join(TESTED_MEGATRON_VERSIONS))
            _patch_cuda_runtime()
            _patch_megatron_rng()
            _patch_torch_norm_for_sequence_parallel()
            _patch_autograd_backward()
            _applied = True
            log.info("cpu_compat: megatron-core %s running on CPU (CUDA call sites redirected)", version)
        enter_mode_in_this_thread()
        return True
