"""CPU compatibility stand-in for ``sgl_kernel`` (part of dcpo_mcore's CPU shim; sglang 0.5.23 only).

Importable so that SGLang's CPU engine starts; every function here raises if it is ever called.
These are exactly the names SGLang 0.5.23 imports from ``sgl_kernel`` on the CPU path used for
dense Qwen2/Qwen3/Llama models with ``--attention-backend torch_native``. Any other name raises
ImportError/AttributeError as if the package lacked it, so SGLang's fallbacks still apply.
See ``dcpo_mcore/rollout/cpu_shim/__init__.py``.
"""
__version__ = "0.0.0+dcpo.cpu.shim"

_NAMES = (
    "copy_all_layer_kv_cache_cpu",
    "assign_req_to_token_pool_cpu",
    "verify_tree_greedy_cpu",
    "fill_bonus_tokens_cpu",
    "fill_accept_out_cache_loc_cpu",
    "build_tree_kernel_efficient_cpu",
    "assign_extend_cache_locs_cpu",
    "assign_draft_cache_locs_contiguous_cpu",
)


class SglKernelUnavailable(RuntimeError):
    """A CUDA/AMX kernel was called on a CPU server that runs with the sgl_kernel stand-in."""


def _unavailable(name: str):
    def kernel(*args, **kwargs):
        raise SglKernelUnavailable(
            f"sgl_kernel.{name} was called, but this SGLang server runs on CPU with dcpo_mcore's "
            "sgl_kernel stand-in (no CPU build of sgl-kernel exists). Use a dense Qwen2/Qwen3/Llama "
            "model with --attention-backend torch_native, or run the server on a GPU.")

    kernel.__name__ = kernel.__qualname__ = name
    return kernel


for _name in _NAMES:
    globals()[_name] = _unavailable(_name)
del _name

__all__ = list(_NAMES)
