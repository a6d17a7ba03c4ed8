"""Inert CPU stand-in for ``torchvision`` (part of dcpo_mcore's CPU shim; sglang 0.5.23 only).

SGLang imports torchvision at module level in its multimodal processors, and PyPI's torchvision
fails beside the CPU torch. Text-only models never use it, so here every ``torchvision.*``
submodule imports, every attribute is a placeholder class (attributes of which are placeholders
too, e.g. ``InterpolationMode.BICUBIC``), and calling or instantiating one raises. It has no
dist-info, so ``importlib.metadata`` sees no torchvision (transformers' ``find_spec`` check does
see the stub; it only uses torchvision for image processors, which a text-only model never builds).
See ``dcpo_mcore/rollout/cpu_shim/__init__.py``.
"""
import importlib.abc
import importlib.machinery
import sys
import types

__version__ = "0.0.0+dcpo.cpu.shim"


class TorchvisionUnavailable(RuntimeError):
    """torchvision functionality was used on a CPU server that runs with the inert stub."""


def _fail(qualname: str):
    raise TorchvisionUnavailable(
        f"{qualname} was called, but this SGLang server runs on CPU with dcpo_mcore's inert "
        "torchvision stub. Serve a text-only model on CPU, or run the server on a GPU.")


class _PlaceholderMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{cls.__qualname__}.{name}")

    def __call__(cls, *args, **kwargs):
        _fail(cls.__qualname__)

    def __repr__(cls):
        return f"<torchvision stub {cls.__qualname__}>"


def _placeholder(qualname: str) -> type:
    module, _, name = qualname.rpartition(".")
    return _PlaceholderMeta(name, (), {"__qualname__": qualname, "__module__": module})


class _InertModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _placeholder(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        return _InertModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []  # a package, so deeper submodules import too
        module.__version__ = __version__


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(__name__ + "."):
            return importlib.machinery.ModuleSpec(fullname, _Loader(), is_package=True)
        return None


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    try:  # `import torchvision; torchvision.transforms` without importing the submodule first
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError:  # pragma: no cover - the finder accepts every name
        return _placeholder(f"{__name__}.{name}")
