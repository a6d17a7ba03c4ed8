"""The SGLang stack this package speaks to: the ONE place its versions are pinned.

``tools/setup_sglang.sh`` reads these two lines (with sed, before anything is installed), the CPU
compatibility shim (:mod:`dcpo_mcore.rollout.cpu_shim`) is tied to ``SGLANG_VERSION``, and the
server launcher refuses a CPU launch on any other version, because the shim's list of stubbed
``sgl_kernel`` names was read from that release. Change a version here, rerun the setup script, and
run ``pytest -m integration tests/integration``: that test launches the real server.
Keep the format ``NAME = "X.Y.Z"`` on one line each: the setup script parses it.
"""
SGLANG_VERSION = "0.5.23"
SGLANG_ROUTER_VERSION = "0.3.2"
