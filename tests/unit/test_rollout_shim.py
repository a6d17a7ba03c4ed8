"""The CPU compatibility shim (sgl_kernel / torchvision stand-ins), the version pins, the lean
requirement list and tools/setup_sglang.sh (without installing anything)."""
from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dcpo_mcore.rollout.cpu_shim import SHIM_DIR, check_sglang_version, shim_env
from dcpo_mcore.rollout.pins import SGLANG_ROUTER_VERSION, SGLANG_VERSION

REPO = Path(__file__).resolve().parents[2]
# sglang requirements deliberately left out of requirements/sglang-cpu.txt (see its header).
EXCLUDED = {"torch", "torchvision", "torchaudio", "torchcodec", "timm", "flashinfer-python", "flash-attn-4",
            "humming-kernels", "kernels", "quack-kernels", "tilelang", "apache-tvm-ffi", "sglang-kernel",
            "sgl-deep-ep", "sgl-deep-gemm", "sgl-flash-mla", "torch-memory-saver", "cuda-python",
            "nvidia-cutlass-dsl", "nvidia-mathdx", "nvshmem4py-cu13", "deepseek-recipe", "tml-renderers",
            "av", "decord2"}


def _name(req: str) -> str:
    return re.split(r"[\s<>=!~;\[]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _requirements(path: Path) -> dict[str, str]:
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith(("#", "-"))]
    return {_name(ln): ln for ln in lines}


def test_shim_env_puts_the_shim_first_once():
    env = shim_env({"PYTHONPATH": os.pathsep.join(["/a", str(SHIM_DIR), "/b"]), "X": "1"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(SHIM_DIR), "/a", "/b"] and env["X"] == "1"
    assert shim_env({})["PYTHONPATH"] == str(SHIM_DIR)


def test_shim_is_tied_to_the_pinned_version():
    check_sglang_version(SGLANG_VERSION)
    for other, text in ((None, "no sglang is installed"), ("0.5.24", "sglang==0.5.24 is installed")):
        with pytest.raises(RuntimeError) as info:
            check_sglang_version(other)
        assert text in str(info.value) and "\n" not in str(info.value) and "setup_sglang.sh" in str(info.value)


def test_stand_ins_import_and_raise_only_when_called():
    code = r'''
import importlib.metadata, sys
import torchvision, torchvision.transforms.v2.functional as tvF
from torchvision.transforms import InterpolationMode, functional as TF
from torchvision import transforms
assert torchvision.__file__.startswith(sys.argv[1])
mode = InterpolationMode.BICUBIC                 # module-level use in sglang's processors
class Sub(transforms.Compose): pass               # subclassing a placeholder works
try:
    transforms.Resize(8)
except RuntimeError as e:
    assert type(e).__name__ == "TorchvisionUnavailable" and "Resize" in str(e)
else:
    raise SystemExit("calling a torchvision placeholder did not raise")
try:
    importlib.metadata.version("torchvision")
except importlib.metadata.PackageNotFoundError:
    pass
else:
    raise SystemExit("the stub must not look installed to importlib.metadata")
import sgl_kernel
from sgl_kernel import copy_all_layer_kv_cache_cpu, assign_req_to_token_pool_cpu
try:
    copy_all_layer_kv_cache_cpu(1, 2)
except RuntimeError as e:
    assert type(e).__name__ == "SglKernelUnavailable" and "copy_all_layer_kv_cache_cpu" in str(e)
else:
    raise SystemExit("a stubbed kernel did not raise")
try:
    from sgl_kernel import merge_state_v2           # a CUDA-path name: ImportError, so fallbacks apply
except ImportError:
    print("ok")
'''
    env = shim_env({k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    out = subprocess.run([sys.executable, "-c", code, str(SHIM_DIR)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_setup_script_reads_the_one_pin():
    script = (REPO / "tools" / "setup_sglang.sh").read_text()
    assert "0.5.23" not in script and "0.3.2" not in script  # versions live in pins.py only
    pin_fn = next(ln for ln in script.splitlines() if ln.startswith("pin()"))
    out = subprocess.run(["bash", "-c", f"{pin_fn}\nPINS=dcpo_mcore/rollout/pins.py\n"
                          "echo $(pin SGLANG_VERSION) $(pin SGLANG_ROUTER_VERSION)"],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == [SGLANG_VERSION, SGLANG_ROUTER_VERSION]
    assert subprocess.run(["bash", "-n", str(REPO / "tools" / "setup_sglang.sh")], timeout=30).returncode == 0


def test_setup_script_needs_an_existing_venv(tmp_path):
    out = subprocess.run(["bash", str(REPO / "tools" / "setup_sglang.sh"), str(tmp_path / "nope"), "--cpu"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "no venv at" in out.stderr and "setup_env.sh" in out.stderr


def test_lean_requirements_hold_no_cuda_or_torch_and_agree_with_base_txt():
    lean = _requirements(REPO / "requirements" / "sglang-cpu.txt")
    cpu = _requirements(REPO / "requirements" / "base.txt")  # transformers, shared by both stacks
    assert not set(lean) & EXCLUDED
    assert not [n for n in lean if n.startswith(("nvidia-", "sgl-", "torch")) and n != "nvidia-ml-py"]
    assert "aiohttp" in lean  # the rollout client's transport
    assert lean["transformers"].replace(" ", "") == cpu["transformers"].replace(" ", "")
    assert "sglang" not in lean and "sglang-router" not in lean  # installed --no-deps from pins.py


def test_lean_requirements_cover_the_installed_wheel():
    """Every Requires-Dist of the pinned sglang is either in the lean list or knowingly excluded."""
    try:
        requires = importlib.metadata.requires("sglang")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("sglang is not installed in this venv")
    if importlib.metadata.version("sglang") != SGLANG_VERSION:
        pytest.skip("a different sglang version is installed")
    lean = _requirements(REPO / "requirements" / "sglang-cpu.txt")
    base = [r for r in requires or [] if "extra ==" not in r]
    missing = sorted(_name(r) for r in base if _name(r) not in lean and _name(r) not in EXCLUDED)
    assert not missing, f"add to requirements/sglang-cpu.txt or to its exclusion list: {missing}"
