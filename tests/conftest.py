"""Shared pytest setup: skip GPU-marked tests when CUDA is absent, and mark the tests that also run on
the second supported stack (Python 3.12, megatron-core 0.19.x; docs/guide.md "Two supported stacks")."""
from pathlib import Path

import pytest

# The tests that exercise megatron-core's APIs (engine build, forward/backward schedules, the CPU
# compatibility layer, dist checkpoints, conversion, layout invariance, weight export and sync, kill -9
# resume). `tools/test.sh` runs them again under .venv312 with `-m mcore_api`; the rest of the suite
# (algorithm math, config, rewards, data, the HTTP client, Slurm) does not touch megatron and runs once.
# Chosen to keep CI under an hour: the 3.12 pass adds about 15 minutes.
MCORE_API_FILES = (
    "dist/test_cpu_compat.py",
    "dist/test_engine_logprobs.py",
    "dist/test_vocab_parallel_logprobs.py",
    "dist/test_checkpoint_engine.py",
    "dist/test_engine_checkpoint.py",
    "dist/test_checkpoint_spec_keys.py",
    "dist/test_engine_layout_invariance.py",
    "dist/test_convert_cli.py",
    "dist/test_demo_pretrain.py",
    "integration/test_weight_sync.py",
    "integration/test_trainer.py",
)
_TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    mcore_api = {str(_TESTS / f) for f in MCORE_API_FILES}
    for item in items:
        if str(item.path) in mcore_api and item.get_closest_marker("first_stack_only") is None:
            item.add_marker(pytest.mark.mcore_api)
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # torch missing entirely: nothing GPU can run
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
