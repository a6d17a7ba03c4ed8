"""DCPO algorithm core: pure torch math, no torch.distributed / megatron / sglang / pydantic imports.

The names below load their module on first use (PEP 562), so a torch-free part such as the
composition table (algorithms.py, which the config reads) imports without torch.

Pinned public API (other code and outside checks call these):
    dynamic_clip_bounds, dcpo_token_loss, PromptStatsStore, sas_advantages, only_token_mean
"""
from __future__ import annotations

import importlib
from typing import Any

_MODULES = {  # module of this package -> the public names it defines
    "advantages": "ESTIMATORS GrpoAdvantageParams SasParams compute_advantages grpo_advantages",
    "aggregation": "AGGREGATIONS GlobalCounts aggregate only_token_mean seq_mean_token_mean token_mean token_sum",
    "algorithms": "ALGORITHMS AlgorithmSpec",
    "clipping": "TokenLossOutput dcpo_token_loss dcpo_token_objective dynamic_clip_bounds",
    "dapo": "dynamic_sampling_keep overlong_penalty",
    "grouping": "prompt_groups",
    "loss": "LossSpec PolicyLossOutput policy_loss",
    "metrics": "ClipCounts advantage_stats clip_counts clip_ratios nonzero_advantage_ratio",
    "objectives": "OBJECTIVES DcpoClipParams DppoTvParams GspoParams NllParams PpoClipParams low_var_kl nll_objective "
                  "token_objective",
    "off_policy": "TisStats merge_tis_stats truncated_importance_weights",
    "registry": "Registry",
    "sas": "PromptStats PromptStatsStore merge_stats sas_advantages",
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names.split()}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
