"""Checks that relate several fields, and the two launch-time checks that need the outside world.

Every problem is one line `field.path: what is wrong (with the values); what to do`. The
cross-field checks collect all problems instead of stopping at the first, so one launch attempt
shows everything that needs fixing.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .schema import TrainConfig


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def options(values: list[int], limit: int = 8) -> str:
    """'1, 2, 4' (or the first `limit` values and '...')."""
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")


def _architecture(cfg: "TrainConfig") -> list[str]:
    m, p = cfg.model, cfg.parallel
    tp, pp, vpp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, \
        p.virtual_pipeline_model_parallel_size
    out = []
    if m.hidden_size % m.num_attention_heads:
        out.append(f"model.hidden_size: {m.hidden_size} is not divisible by model.num_attention_heads="
                   f"{m.num_attention_heads}; use a head count from {options(divisors(m.hidden_size))}")
    if m.num_attention_heads % m.num_query_groups:
        out.append(f"model.num_query_groups: {m.num_query_groups} must divide model.num_attention_heads="
                   f"{m.num_attention_heads}; use {options(divisors(m.num_attention_heads))}")
    if m.num_attention_heads % tp or m.num_query_groups % tp:
        ok = divisors(math.gcd(m.num_attention_heads, m.num_query_groups))
        out.append(f"parallel.tensor_model_parallel_size: {tp} must divide model.num_attention_heads="
                   f"{m.num_attention_heads} and model.num_query_groups={m.num_query_groups}; use {options(ok)}")
    if m.num_layers % pp:
        out.append(f"parallel.pipeline_model_parallel_size: {pp} must divide model.num_layers="
                   f"{m.num_layers}; use {options(divisors(m.num_layers))}")
    elif vpp is not None and pp == 1:
        out.append(f"parallel.virtual_pipeline_model_parallel_size: {vpp} needs "
                   "parallel.pipeline_model_parallel_size > 1 (got 1); set it to null or raise PP")
    elif vpp is not None and m.num_layers % (pp * vpp):
        ok = divisors(m.num_layers // pp)  # VPP must divide the layers of one PP stage
        out.append(f"parallel.virtual_pipeline_model_parallel_size: model.num_layers={m.num_layers} must "
                   f"be divisible by PP*VPP = {pp}*{vpp} = {pp * vpp}; use VPP in {options(ok)}")
    if m.num_attention_heads % cfg.rollout.server_tp_size:
        out.append(f"rollout.server_tp_size: {cfg.rollout.server_tp_size} must divide "
                   f"model.num_attention_heads={m.num_attention_heads}; use "
                   f"{options(divisors(m.num_attention_heads))}")
    longest = cfg.rollout.max_prompt_tokens + cfg.rollout.max_new_tokens
    if longest > m.max_position_embeddings:
        out.append(f"rollout.max_new_tokens: rollout.max_prompt_tokens + rollout.max_new_tokens = "
                   f"{cfg.rollout.max_prompt_tokens} + {cfg.rollout.max_new_tokens} = {longest} exceeds "
                   f"model.max_position_embeddings={m.max_position_embeddings}; shorten them")
    return out


def _model(cfg: "TrainConfig") -> list[str]:
    m = cfg.model
    out = []
    missing = m.missing_architecture()
    if missing:
        out.append(f"model: architecture not set ({', '.join('model.' + f for f in missing)}); set "
                   "model.hf_path to a Hugging Face checkpoint directory or give these fields")
    else:
        out += _architecture(cfg)
    if m.fp8 is not None and m.params_dtype != "bfloat16":
        out.append(f"model.fp8: {m.fp8} needs model.params_dtype=bfloat16 (got {m.params_dtype}); set "
                   "model.params_dtype=bfloat16 or model.fp8=null")
    if cfg.parallel.sequence_parallel and cfg.parallel.tensor_model_parallel_size == 1:
        out.append("parallel.sequence_parallel: true needs parallel.tensor_model_parallel_size > 1 "
                   "(got 1); set parallel.sequence_parallel=false")
    return out


def _rollout(cfg: "TrainConfig") -> list[str]:
    r, a = cfg.rollout, cfg.algo
    out = []
    if r.n_samples_per_prompt < 2:
        out.append(f"rollout.n_samples_per_prompt: {r.n_samples_per_prompt} must be >= 2: algo.name="
                   f"{a.name} standardises rewards within each prompt's group; use 2 or more (paper: 16)")
    if r.prompts_per_step % a.mini_batch_prompts:
        out.append(f"algo.mini_batch_prompts: {a.mini_batch_prompts} must divide rollout.prompts_per_step="
                   f"{r.prompts_per_step}; use {options(divisors(r.prompts_per_step), 12)}")
    if r.server_urls and r.num_servers:
        out.append(f"rollout.num_servers: {r.num_servers} servers to launch but rollout.server_urls "
                   f"lists {len(r.server_urls)} to attach to; set only one (rollout.num_servers=0 to attach)")
    if not r.server_urls and r.num_servers == 0:
        out.append("rollout.num_servers: 0 and rollout.server_urls is empty, so there is no server; "
                   "set rollout.num_servers >= 1 or list rollout.server_urls")
    if r.push_mode != "wait" and r.max_staleness == 0:
        out.append(f"rollout.push_mode: {r.push_mode} pauses generation in flight during a push, and with "
                   "rollout.max_staleness=0 nothing is in flight then; set rollout.max_staleness >= 1 or push_mode=wait")
    total = len(r.server_urls) or r.num_servers
    if r.use_router and total < 2:
        out.append(f"rollout.use_router: true needs more than one server (got {total}); set "
                   "rollout.use_router=false or rollout.num_servers >= 2")
    return out


def _algo(cfg: "TrainConfig") -> list[str]:
    a = cfg.algo
    out = []
    if a.name == "dcpo" and not a.eps_low < 0.25:  # cross-field style, so it is reported with the rest
        out.append(f"algo.eps_low: {a.eps_low} must be in (0, 0.25) for algo.name=dcpo, else the lower "
                   "bound 0.5+0.5*sqrt(1-4*eps_low/q) is not real at q=1; use e.g. 0.16 (paper)")
    buffer = a.rollout_shaping().get("overlong_buffer_len", 0)
    if buffer and buffer >= cfg.rollout.max_new_tokens:
        out.append(f"algo.overlong_buffer_len: {buffer} must be < rollout.max_new_tokens="
                   f"{cfg.rollout.max_new_tokens}; use a smaller buffer or 0 to turn overlong shaping off")
    return out


def _optim(cfg: "TrainConfig") -> list[str]:
    o = cfg.optim
    out = []
    if o.min_lr > o.lr:
        out.append(f"optim.min_lr: {o.min_lr} must be <= optim.lr={o.lr}; lower optim.min_lr")
    if o.lr_warmup_steps >= cfg.steps:
        out.append(f"optim.lr_warmup_steps: {o.lr_warmup_steps} must be < steps={cfg.steps}; use at most "
                   f"{cfg.steps - 1}")
    return out


def cross_field_problems(cfg: "TrainConfig") -> list[str]:
    """All cross-field problems of an otherwise field-valid config (empty list = valid)."""
    return _model(cfg) + _rollout(cfg) + _algo(cfg) + _optim(cfg)


def check_paths(cfg: "TrainConfig") -> None:
    """Launch-time existence checks (kept out of validation so configs build without files)."""
    out = []
    if not cfg.data.train_files:
        out.append("data.train_files: empty; list at least one .parquet or .jsonl file")
    for key in ("train_files", "eval_files"):
        for i, f in enumerate(getattr(cfg.data, key)):
            if not Path(f).is_file():
                out.append(f"data.{key}[{i}]: file not found: {f} (relative paths are from {Path.cwd()})")
    m = cfg.model
    if m.hf_path and not (Path(m.hf_path) / "config.json").is_file():
        out.append(f"model.hf_path: {m.hf_path} has no config.json; point it at a Hugging Face checkpoint dir")
    if m.init_checkpoint and not Path(m.init_checkpoint).is_dir():
        out.append(f"model.init_checkpoint: directory not found: {m.init_checkpoint}")
    resume = cfg.checkpoint.resume
    if resume not in ("auto", "never") and not Path(resume).exists():
        out.append(f"checkpoint.resume: {resume} does not exist; use auto, never or an existing checkpoint")
    if out:
        raise ConfigError(out)


def check_world_size(cfg: "TrainConfig", world_size: int) -> int:
    """Check the layout against the number of trainer ranks; return the data-parallel size."""
    p = cfg.parallel
    tp, pp, mbs = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.micro_batch_size
    model_par = tp * pp
    if world_size < 1:
        raise ConfigError(f"parallel: world_size={world_size} must be >= 1")
    if world_size % model_par:
        ok = [model_par * k for k in (1, 2, 4, 8)]
        raise ConfigError(f"parallel: world_size={world_size} is not divisible by TP*PP = {tp}*{pp} = "
                          f"{model_par}; launch a multiple of {model_par} ranks (e.g. {options(ok)}) "
                          "or change the parallel sizes")
    dp = world_size // model_par
    per_step = cfg.algo.mini_batch_prompts * cfg.rollout.n_samples_per_prompt
    if per_step % (dp * mbs):
        good_mbs = [m for m in divisors(per_step) if per_step % (dp * m) == 0]
        fix = (f"use parallel.micro_batch_size in {options(good_mbs)}" if good_mbs else
               f"use a world size whose DP divides {per_step}, e.g. DP in {options(divisors(per_step))} "
               f"(world = DP*{model_par}), or change algo.mini_batch_prompts")
        raise ConfigError(
            f"parallel.micro_batch_size: algo.mini_batch_prompts*rollout.n_samples_per_prompt = "
            f"{cfg.algo.mini_batch_prompts}*{cfg.rollout.n_samples_per_prompt} = {per_step} responses per "
            f"optimizer step must be divisible by DP*micro_batch_size = {dp}*{mbs} = {dp * mbs} "
            f"(DP = world_size {world_size} / (TP*PP) {model_par}); {fix}")
    return dp
