"""The symbolic checks a ``SymbolicJob`` can name, and how to run one.

Shared by the pool's worker processes and the in-process ``Verifier.grade`` path, so both grade
identically. A check takes ``(pred, ground_truths)`` and returns whether ``pred`` matches any.
"""
from __future__ import annotations

from typing import Callable

from dcpo_mcore.algo.registry import Registry
from dcpo_mcore.reward.equivalence import symbolic_equivalent
from dcpo_mcore.reward.grading import SymbolicJob

SYMBOLIC_CHECKS: Registry[Callable[..., bool]] = Registry("symbolic check")
SYMBOLIC_CHECKS.register("math", symbolic_equivalent)


def run_symbolic_job(job: SymbolicJob) -> bool:
    """Run one symbolic check in this process. No timeout here: the pool enforces it."""
    return bool(SYMBOLIC_CHECKS.get(job.kind)(job.pred, list(job.ground_truths)))
