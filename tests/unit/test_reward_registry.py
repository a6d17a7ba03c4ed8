"""Verifier registry and package hygiene."""
import re
from pathlib import Path

import pytest

from dcpo_mcore.algo.registry import Registry
from dcpo_mcore.errors import is_user_error
from dcpo_mcore.reward import (
    ExactMatchVerifier,
    MathVerifier,
    RewardScheme,
    Verifier,
    available_verifiers,
    get_verifier,
    register_verifier,
)
from dcpo_mcore.reward import verifiers as verifiers_module


@pytest.fixture
def scratch_registry(monkeypatch):
    """Let a test register names without leaking them into the process-wide registry."""
    live = verifiers_module._VERIFIERS
    scratch = Registry(live.kind, error=live.error)
    for name in live:
        scratch.register(name, live.get(name))
    monkeypatch.setattr(verifiers_module, "_VERIFIERS", scratch)


def test_builtin_names():
    assert {"math", "exact_match"} <= set(available_verifiers())
    assert isinstance(get_verifier("math"), MathVerifier)
    assert isinstance(get_verifier("exact_match"), ExactMatchVerifier)


def test_params_reach_the_verifier():
    verifier = get_verifier("math", scheme="binary", max_symbolic_chars=64)
    assert verifier.scheme is RewardScheme.BINARY and verifier.max_symbolic_chars == 64
    assert get_verifier("exact_match", require_box=True).require_box
    assert get_verifier("math").scheme is RewardScheme.TERNARY  # DCPO default


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown verifier 'maths'") as info:
        get_verifier("maths")
    assert "exact_match" in str(info.value) and "math" in str(info.value)
    assert is_user_error(info.value)  # a config's typo: one line, no traceback


def test_duplicate_registration_raises(scratch_registry):
    with pytest.raises(ValueError, match="already registered"):
        register_verifier("math", MathVerifier)


def test_register_custom_verifier(scratch_registry):
    class AlwaysWrong(Verifier):
        name = "always_wrong"

        def precheck(self, response, ground_truth):
            from dcpo_mcore.reward import make_result

            return make_result(self.scheme, correct=False, pred=response)

    register_verifier(AlwaysWrong.name, AlwaysWrong)
    assert "always_wrong" in available_verifiers()
    assert get_verifier("always_wrong", scheme="binary").grade("5", "5").reward == -1.0


def test_unknown_params_are_rejected():
    with pytest.raises(TypeError):
        get_verifier("math", no_such_option=1)


def test_reward_package_imports_no_heavy_frameworks():
    """The reward package must stay importable without torch.distributed/megatron/sglang."""
    package_dir = Path(verifiers_module.__file__).parent
    banned = re.compile(r"^\s*(?:import|from)\s+(?:torch|megatron|sglang)\b", re.MULTILINE)
    sources = sorted(package_dir.glob("*.py"))
    assert len(sources) >= 5
    for source in sources:
        assert not banned.search(source.read_text()), source.name


def test_a_crashing_precheck_scores_wrong_instead_of_raising():
    class Broken(MathVerifier):
        def precheck(self, response, ground_truth):
            raise RuntimeError("boom")

    result = Broken(scheme="ternary").grade("\\boxed{1}", "1")
    assert (result.correct, result.reward) == (False, -1.0)
    assert "boom" in result.error
