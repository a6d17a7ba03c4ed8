"""Optimizer, learning-rate schedule and the guarded optimizer step of the policy engine.

* :func:`build_optimizer` - megatron's ``get_megatron_optimizer`` (AdamW; TE/apex fused Adam on a GPU,
  torch AdamW otherwise), plain or distributed per the layout.
* :class:`LRSchedule` - constant / linear / cosine after a linear warmup, as a pure function of the step,
  so resuming needs only the step number (kept in the checkpoint by the engine).
* :func:`guarded_step` - megatron's ``optimizer.step()`` split into its parts so that a non-finite loss
  or gradient norm skips the update on every rank (the decision uses only all-reduced values, so all
  ranks agree) instead of writing NaN into the weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from .layout import ParallelLayout, Precision
from dcpo_mcore.errors import UserValueError

# megatron is imported inside the functions that need it, so that the schedule and settings above can be
# used (and unit-tested) without paying for the megatron import.


@dataclass(frozen=True)
class OptimSettings:
    """AdamW and its schedule (mirrors the ``optim`` config section; see :meth:`from_config`)."""

    lr: float = 1e-6
    min_lr: float = 0.0
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    lr_warmup_steps: int = 0
    total_steps: int | None = None  # needed by linear / cosine decay
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0

    @classmethod
    def from_config(cls, optim, total_steps: int | None = None) -> "OptimSettings":
        """From the pydantic ``optim`` section (duck-typed: the engine does not import the config tree)."""
        names = ("lr", "min_lr", "lr_schedule", "lr_warmup_steps", "weight_decay", "adam_beta1",
                 "adam_beta2", "adam_eps", "clip_grad")
        return cls(**{n: getattr(optim, n) for n in names}, total_steps=total_steps)

    def schedule(self) -> "LRSchedule":
        return LRSchedule(self.lr, self.min_lr, self.lr_schedule, self.lr_warmup_steps, self.total_steps)


@dataclass(frozen=True)
class LRSchedule:
    """lr(step) for step = 0, 1, ...: linear warmup to ``lr``, then constant or decay to ``min_lr``.

    Warmup gives ``lr * (step + 1) / warmup`` so the first step already moves the weights; decay reaches
    ``min_lr`` at ``total - 1`` (the last step) and stays there.
    """

    lr: float
    min_lr: float = 0.0
    kind: Literal["constant", "linear", "cosine"] = "constant"
    warmup: int = 0
    total: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "linear", "cosine"):
            raise UserValueError(f"lr schedule {self.kind!r} is unknown; use constant, linear or cosine")
        if self.kind != "constant" and (self.total is None or self.total <= self.warmup):
            raise UserValueError(f"a {self.kind} schedule needs total_steps > lr_warmup_steps ({self.warmup}), "
                             f"got {self.total}")

    def at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.kind == "constant":
            return self.lr
        span = max(1, self.total - 1 - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        if self.kind == "linear":
            scale = 1.0 - progress
        else:
            scale = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr + (self.lr - self.min_lr) * scale


def build_optimizer(chunks, settings: OptimSettings, layout: ParallelLayout, precision: Precision):
    """megatron optimizer over the DDP-wrapped chunks; fp32 main params and grads in any precision."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    config = OptimizerConfig(
        optimizer="adam", lr=settings.lr, min_lr=settings.min_lr, weight_decay=settings.weight_decay,
        adam_beta1=settings.adam_beta1, adam_beta2=settings.adam_beta2, adam_eps=settings.adam_eps,
        clip_grad=settings.clip_grad, bf16=precision.params_dtype == torch.bfloat16,
        fp16=precision.params_dtype == torch.float16, params_dtype=precision.params_dtype,
        use_distributed_optimizer=layout.use_distributed_optimizer,
    )
    return get_megatron_optimizer(config, chunks)


def _sub_optimizers(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def set_lr(optimizer, lr: float) -> None:
    """Set the learning rate of every param group (megatron's groups differ only in weight decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class StepResult:
    applied: bool
    grad_norm: float
    reason: str = ""  # why the update was skipped


def guarded_step(optimizer, loss: float, clip_grad: float) -> StepResult:
    """``prepare_grads -> grad norm -> (skip | clip -> step)``; the same decision on every rank.

    ``loss`` must already be reduced over the whole world (it is: see forward.reduce_train_metrics), and
    the grad norm is reduced over the model- and data-parallel groups by megatron.
    """
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    found_inf = optimizer.prepare_grads()
    grad_norm = float(optimizer.get_grad_norm())
    reason = ""
    if found_inf:
        reason = "inf/nan in gradients (loss scaler)"
    elif not math.isfinite(loss):
        reason = f"non-finite loss {loss}"
    elif not math.isfinite(grad_norm):
        reason = f"non-finite grad norm {grad_norm}"
    if reason:
        optimizer.zero_grad()
        return StepResult(False, grad_norm, reason)
    if clip_grad > 0:
        for opt in _sub_optimizers(optimizer):
            params = opt.get_parameters()
            if params and not getattr(opt, "is_stub_optimizer", False):
                clip_grad_by_total_norm_fp32(params, max_norm=clip_grad, total_norm=grad_norm)
    optimizer.step_with_ready_grads()
    return StepResult(True, grad_norm)
