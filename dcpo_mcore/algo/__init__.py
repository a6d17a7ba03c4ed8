"""DCPO algorithm core: pure torch math, no torch.distributed / megatron / sglang / pydantic imports.

Pinned public API (other code and outside checks call these):
    dynamic_clip_bounds, dcpo_token_loss, PromptStatsStore, sas_advantages, only_token_mean
"""
from .advantages import ESTIMATORS, GrpoAdvantageParams, SasParams, compute_advantages, grpo_advantages
from .aggregation import (
    AGGREGATIONS,
    GlobalCounts,
    aggregate,
    only_token_mean,
    seq_mean_token_mean,
    token_mean,
    token_sum,
)
from .algorithms import ALGORITHMS, AlgorithmSpec
from .clipping import TokenLossOutput, dcpo_token_loss, dcpo_token_objective, dynamic_clip_bounds
from .dapo import dynamic_sampling_keep, overlong_penalty
from .grouping import prompt_groups
from .loss import LossSpec, PolicyLossOutput, policy_loss
from .metrics import ClipCounts, advantage_stats, clip_counts, clip_ratios, nonzero_advantage_ratio
from .objectives import (
    OBJECTIVES,
    DcpoClipParams,
    GspoParams,
    NllParams,
    PpoClipParams,
    low_var_kl,
    nll_objective,
    token_objective,
)
from .registry import Registry
from .sas import PromptStats, PromptStatsStore, merge_stats, sas_advantages

__all__ = [name for name in dir() if not name.startswith("_")]
