"""dcpo-mcore: DCPO (Dynamic Clipping Policy Optimization) RL trainer on megatron-core."""
from pathlib import Path

from setuptools import find_packages, setup


def _requirements(name: str) -> list[str]:
    lines = (Path(__file__).parent / "requirements" / name).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith(("#", "-r"))]


# The supported range, tested in CI on both ends: megatron-core 0.16.1 with torch 2.13 on Python 3.11
# (requirements/cpu.txt) and megatron-core 0.19.2 with torch 2.14.1 on Python 3.12 (requirements/py312.txt);
# tools/setup_env.sh installs the exact pins of one of those files.
SUPPORTED_STACK = ["torch>=2.13,<2.15", "megatron-core>=0.16.1,<0.20"]

setup(
    name="dcpo-mcore",
    version="0.1.0",
    description="DCPO reinforcement learning for LLMs on megatron-core with SGLang rollouts",
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["dcpo_mcore", "dcpo_mcore.*"]),
    install_requires=_requirements("base.txt") + SUPPORTED_STACK,
    extras_require={"gpu": _requirements("gpu.txt")},
    entry_points={
        "console_scripts": [
            "dcpo-train=dcpo_mcore.cli.train:train_main",
            "dcpo-convert=dcpo_mcore.cli.convert:main",
            "dcpo-report=dcpo_mcore.cli.report:main",
            "dcpo-eval=dcpo_mcore.cli.eval:main",
            "dcpo-demo=dcpo_mcore.cli.demo:demo_main",
        ]
    },
)
