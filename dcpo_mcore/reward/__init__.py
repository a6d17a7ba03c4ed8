"""Rewards for DCPO and its baselines: answer extraction, equivalence, verifiers, grading pool.

Typical trainer use::

    from dcpo_mcore.reward import RewardPool

    with RewardPool("math", scheme="ternary", num_workers=2, timeout_s=5.0) as pool:
        results = pool.grade_batch([(response_text, ground_truth), ...])
        rewards = [r.reward for r in results]
        timeouts = pool.last_batch_stats.timeouts

Nothing here imports torch, megatron or sglang; math-verify is imported lazily (in the pool's
worker processes, or on the first in-process symbolic check).
"""
from dcpo_mcore.reward.equivalence import (
    MAX_SYMBOLIC_CHARS,
    answers_equivalent,
    decide_cheaply,
    ground_truth_candidates,
    plan_equivalence,
    symbolic_equivalent,
)
from dcpo_mcore.reward.extraction import extract_last_boxed
from dcpo_mcore.reward.grading import GradeResult, RewardScheme, SymbolicJob, make_result, reward_value
from dcpo_mcore.reward.normalization import normalize_answer
from dcpo_mcore.reward.pool import PoolStats, RewardPool
from dcpo_mcore.reward.verifiers import (
    ExactMatchVerifier,
    MathVerifier,
    PendingGrade,
    Verifier,
    available_verifiers,
    get_verifier,
    register_verifier,
)

__all__ = [
    "MAX_SYMBOLIC_CHARS",
    "ExactMatchVerifier",
    "GradeResult",
    "MathVerifier",
    "PendingGrade",
    "PoolStats",
    "RewardPool",
    "RewardScheme",
    "SymbolicJob",
    "Verifier",
    "answers_equivalent",
    "available_verifiers",
    "decide_cheaply",
    "extract_last_boxed",
    "get_verifier",
    "ground_truth_candidates",
    "make_result",
    "normalize_answer",
    "plan_equivalence",
    "register_verifier",
    "reward_value",
    "symbolic_equivalent",
]
