"""Steps 4-6 of the loop: advantages, old log-probs, PPO mini-batch updates, and the step's metrics.

Every rank runs this on the same :class:`RolloutBatch` (the engine splits each mini-batch over DP
ranks itself). The advantage estimator is pure math, so the SAS store stays identical everywhere.

Invariant checks (cheap, always on, reported as ``invariant/*`` metrics):

* the first optimizer step of a training step runs on exactly the policy whose log-probs were just
  computed, so its ratio is 1: ``invariant/first_update_log_ratio_abs_max`` ~ 0 and its token clip
  ratio is 0. Anything else means the forward passes disagree (dropout on? a layout bug?);
* a non-finite loss or grad norm skips the optimizer step (the engine's guard) and is counted;
* the trainer's old log-probs and SGLang's sampler log-probs agree within ``mismatch_bound``
  (mean |diff| over tokens); a larger gap means the rollout engine is not serving our weights. Checked
  only on batches generated with the step's own policy: an off-policy batch (rollout.max_staleness >= 1)
  differs by design, and the push's log-prob verification checks the servers' weights instead.
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

import torch

from dcpo_mcore.algo import advantage_stats, compute_advantages, merge_tis_stats, truncated_importance_weights
from dcpo_mcore.engine.batching import PolicySample

from .rollout_stage import RolloutBatch

log = logging.getLogger(__name__)
FIRST_UPDATE_RATIO_TOL = 1e-4  # |log ratio| of the first update; float32 forward passes repeat to ~1e-6


@dataclass(frozen=True)
class UpdateSettings:
    estimator: str  # "sas" | "grpo"
    estimator_params: object
    mini_batch_prompts: int
    ppo_epochs: int
    mismatch_bound: float  # rollout.mismatch_bound: mean |trainer - sampler| log-prob per token
    tis_cap: float | None = None  # algo.tis_cap: truncated importance weights of the sampler's tokens; None = off


def update_policy(engine, batch: RolloutBatch, store, settings: UpdateSettings, ref_engine=None, *,
                  phase=None) -> dict[str, float]:
    """Advantages -> old (and reference) log-probs -> ``ppo_epochs`` x mini-batch optimizer steps. Collective.

    ``ref_engine``: the frozen initial policy, for losses with a KL term (GRPO's low_var_kl); None otherwise.
    ``phase``: a :class:`~dcpo_mcore.metrics.phases.PhaseMeter` timing "old_logprobs" and "train", or None.
    """
    phase = phase or _untimed
    G = batch.group_size
    rewards = torch.tensor(batch.rewards, dtype=torch.float32)
    adv = compute_advantages(settings.estimator, rewards, batch.keys, settings.estimator_params,
                             store=store, group_size=G)
    samples = [PolicySample(prompt_ids=p, response_ids=r, advantage=float(a))
               for p, r, a in zip(batch.prompt_ids, batch.response_ids, adv.tolist())]
    with phase("old_logprobs"):
        old = engine.compute_logprobs(samples)
        for s, lp in zip(samples, old.logprobs):
            s.old_logprobs = lp
        if ref_engine is not None:
            for s, lp in zip(samples, ref_engine.compute_logprobs(samples).logprobs):
                s.ref_logprobs = lp
    bound = settings.mismatch_bound if batch.staleness_max == 0 else None
    metrics = {**_rollout_metrics(batch, adv), **_mismatch_metrics(batch, old.logprobs, bound)}
    if settings.tis_cap is not None:
        metrics.update(_apply_tis(samples, batch.sampler_logprobs, settings.tis_cap))

    rows = settings.mini_batch_prompts * G
    steps = []
    with phase("train"):
        for _epoch in range(settings.ppo_epochs):
            for start in range(0, len(samples), rows):
                steps.append(engine.train_step(samples[start:start + rows], group_size=G))
    metrics.update(_update_metrics(steps))
    return metrics


def _apply_tis(samples: list[PolicySample], sampler_logprobs: list[list[float]], cap: float) -> dict[str, float]:
    """Set each sample's truncated importance weights (docs/algorithm.md [tis]); their statistics."""
    parts = []
    for s, behaviour in zip(samples, sampler_logprobs):
        s.token_weights, stats = truncated_importance_weights(s.old_logprobs, behaviour, cap)
        parts.append(stats)
    total = merge_tis_stats(parts)
    return {"mismatch/tis_weight_mean": total.weight_mean, "mismatch/tis_truncated_fraction": total.truncated_fraction}


def _untimed(_name: str):
    return contextlib.nullcontext()


def _rollout_metrics(batch: RolloutBatch, adv: torch.Tensor) -> dict[str, float]:
    n = len(batch.rewards)
    stats = advantage_stats(adv)
    lengths = [len(r) for r in batch.response_ids]
    return {
        "reward/mean": sum(batch.rewards) / n,
        "reward/correct_ratio": sum(batch.correct) / n,
        "reward/format_error_ratio": sum(batch.format_error) / n,
        "adv/nonzero_ratio": float(stats["nonzero_ratio"]),
        "adv/abs_mean": float(stats["abs_mean"]),
        "rollout/response_length_mean": sum(lengths) / n,
        "rollout/response_length_max": float(max(lengths)),
        "rollout/truncated_ratio": sum(batch.truncated) / n,
        "rollout/generated_responses": float(batch.generated_responses),
        "rollout/generation_rounds": float(batch.generation_rounds),
        "rollout/dropped_stale": float(batch.dropped_stale),
        "rollout/staleness_mean": batch.staleness_mean,
        "rollout/staleness_max": float(batch.staleness_max),
        "perf/trained_tokens": float(sum(lengths) + sum(len(p) for p in batch.prompt_ids)),
    }


def _mismatch_metrics(batch: RolloutBatch, trainer_lps: list[torch.Tensor], bound: float | None) -> dict[str, float]:
    """``bound`` None: an off-policy batch; the gap is reported, and no invariant is claimed for it."""
    diffs = [(lp - torch.tensor(s, dtype=torch.float32)).abs() for lp, s in zip(trainer_lps, batch.sampler_logprobs)]
    flat = torch.cat(diffs) if diffs else torch.zeros(0)
    flat = flat[torch.isfinite(flat)]  # a sample without sampler log-probs is left out, not counted as 0
    mean = float(flat.mean()) if flat.numel() else float("nan")
    out = {"mismatch/logprob_abs_mean": mean,
           "mismatch/logprob_abs_max": float(flat.max()) if flat.numel() else float("nan")}
    if bound is None:
        return out
    within = math.isfinite(mean) and mean <= bound
    if not within:
        log.warning("trainer/SGLang log-prob mismatch %.4g exceeds the bound %.4g: the rollout engine may not be "
                    "serving the trainer's weights (check sync/logprob_max_abs_diff and dtypes)", mean, bound)
    return {**out, "invariant/mismatch_within_bound": float(within)}


def _update_metrics(steps: list[dict[str, float]]) -> dict[str, float]:
    """The step's metrics from its optimizer steps' ones, plus invariants.

    TCR and the low/high/dual ratios are the plain mean over every micro-batch of the step (paper
    Eq. 9, docs/algorithm.md [tcr]); each optimizer step reports the mean over its own non-empty
    micro-batches and how many there were. ``clip/token_clip_ratio_global`` is the token-weighted
    fraction over the whole step; entropy and the PPO KL are token means."""
    tokens = [s["perf/response_tokens"] for s in steps]
    total = sum(tokens) or 1.0
    micro = [s["clip/micro_batches"] for s in steps]

    def weighted(key: str) -> float:
        return sum(s[key] * t for s, t in zip(steps, tokens) if t) / total

    def per_micro_batch(key: str) -> float:
        n = sum(micro)
        return sum(s[key] * m for s, m in zip(steps, micro) if m) / n if n else float("nan")

    first = steps[0]
    first_ok = first["loss/log_ratio_abs_max"] <= FIRST_UPDATE_RATIO_TOL and first["clip/token_clip_ratio"] == 0.0
    if not first_ok:
        log.warning("invariant broken: the first update's |log ratio| is %.3g (TCR %.3g); old and new log-probs "
                    "should be identical before any update", first["loss/log_ratio_abs_max"],
                    first["clip/token_clip_ratio"])
    out = {k: per_micro_batch(k) for k in ("clip/token_clip_ratio", "clip/low_ratio", "clip/high_ratio",
                                           "clip/dual_ratio")}
    out.update({k: weighted(k) for k in ("clip/token_clip_ratio_global", "actor/entropy", "actor/ppo_kl")})
    out.update({
        "loss/policy": sum(s["loss/policy"] for s in steps) / len(steps),
        "loss/total": sum(s["loss/total"] for s in steps) / len(steps),
        "loss/kl": sum(s["loss/kl"] for s in steps) / len(steps),
        "loss/grad_norm": sum(s["loss/grad_norm"] for s in steps) / len(steps),
        "loss/grad_norm_max": max(s["loss/grad_norm"] for s in steps),
        "optim/lr": steps[-1]["optim/lr"],
        "optim/updates": float(len(steps)),
        "optim/skipped_updates": sum(s["optim/skipped"] for s in steps),
        "invariant/first_update_log_ratio_abs_max": first["loss/log_ratio_abs_max"],
        "invariant/first_update_token_clip_ratio": first["clip/token_clip_ratio"],
        "invariant/first_update_ratio_is_one": float(first_ok),
        "invariant/loss_finite": float(all(math.isfinite(s["loss/total"]) for s in steps)),
    })
    return out
