"""The policy engine: a megatron-core GPT built from a Hugging Face checkpoint, trained with one adapter.

Usage (every rank of the job runs the same calls with the same full list of samples)::

    engine = PolicyEngine.from_hf(hf_dir, EngineSettings(layout=ParallelLayout(tp=2)), loss_spec)
    old = engine.compute_logprobs(samples)          # forward only; per-sample [R_i] on every rank
    metrics = engine.train_step(samples, group_size=G)   # one optimizer step over the samples
    engine.save_checkpoint(dir); engine.load_checkpoint(dir)

The DP split and micro-batch plan are deterministic functions of the sample lengths (batching.py); the
loss of every micro-batch carries the step's global counts and the gradients are summed over
micro-batches and DP ranks (forward.py), so the update is the same for any TP x PP x DP x micro-batch
layout, padded or packed.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.pipeline_parallel import get_forward_backward_func

from dcpo_mcore.algo import GlobalCounts, LossSpec, clip_ratios

from . import dist_ckpt
from .batching import BatchSettings, MicroBatch, PolicySample, build_microbatch, microbatch_count, microbatch_shape
from .batching import plan_microbatches, split_across_dp
from .forward import ForwardStep, LogprobSettings, finalize_grads_without_token_scaling
from .forward import gather_logprobs, reduce_train_metrics
from .hf_arch import ArchSpec
from .hf_mapping import hf_to_mcore_shard
from .layout import ParallelLayout, Precision, sequence_multiple
from .model_builder import build_model_chunks, build_transformer_config, select_layer_spec
from .optimizer import OptimSettings, build_optimizer, guarded_step, set_lr
from .output_rows import ResponseRowSelector
from .parallel import init_model_parallel

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class EngineSettings:
    """Everything that shapes the engine besides the checkpoint and the loss."""

    layout: ParallelLayout = field(default_factory=ParallelLayout)
    precision: Precision = field(default_factory=Precision)
    optim: OptimSettings = field(default_factory=OptimSettings)
    batching: BatchSettings = field(default_factory=BatchSettings)
    temperature: float = 1.0  # the rollout's sampling temperature: log-probs are of softmax(z / T)
    seed: int = 0
    want_te: bool = True  # Transformer Engine layer spec when it imports on a GPU
    dropout: float = 0.0
    trainable: bool = True  # False: forward-only engine (e.g. a frozen reference policy), no optimizer


@dataclass
class LogprobOutput:
    logprobs: list[torch.Tensor]  # per sample [R_i], float32
    entropy: list[torch.Tensor]  # per sample [R_i], float32


def hf_tensor_getter(hf_dir: str | Path):
    """``name -> tensor`` over a (possibly sharded) safetensors checkpoint, plus all names."""
    from safetensors import safe_open

    root = Path(hf_dir)
    index = root / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
    elif (root / "model.safetensors").exists():
        with safe_open(str(root / "model.safetensors"), "pt") as f:
            weight_map = {k: "model.safetensors" for k in f.keys()}
    else:
        raise FileNotFoundError(f"no model.safetensors(.index.json) in {root}; save the HF model with "
                                "save_pretrained(safe_serialization=True)")

    handles = {}  # one lazily opened (memory-mapped) handle per shard file

    def get(name: str) -> torch.Tensor:
        file = weight_map[name]
        if file not in handles:
            handles[file] = safe_open(str(root / file), "pt")
        return handles[file].get_tensor(name)

    return get, list(weight_map)


def load_hf_weights(chunks, arch: ArchSpec, hf_dir: str | Path, dtype: torch.dtype, te_names: bool) -> None:
    """Fill this rank's (unwrapped) chunks from the HF checkpoint.

    Chunk v of PP rank p is megatron "model chunk" v * PP + p of PP * VPP equal layer ranges
    (``get_transformer_layer_offset``), so it is loaded as stage v * PP + p of a PP * VPP split.
    """
    get, names = hf_tensor_getter(hf_dir)
    tp, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    pp, pp_rank = ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank()
    for v, chunk in enumerate(chunks):
        shard = hf_to_mcore_shard(get, arch, tp_rank, tp, v * pp + pp_rank, pp * len(chunks),
                                  te_names=te_names, hf_names=names)
        full = {k: t for k, t in chunk.state_dict().items() if k.endswith("_extra_state")}
        full.update({k: t.to(dtype) for k, t in shard.items()})
        chunk.load_state_dict(full, strict=True)


class PolicyEngine:
    """Model chunks (DDP-wrapped), optimizer and the two passes the RL loop needs."""

    def __init__(self, chunks, optimizer, arch: ArchSpec, settings: EngineSettings, loss_spec: LossSpec | None,
                 uses_te: bool):
        self.chunks, self.optimizer, self.arch = chunks, optimizer, arch
        self.settings, self.loss_spec, self.uses_te = settings, loss_spec, uses_te
        self.schedule = settings.optim.schedule()
        self.steps_done = 0  # applied optimizer steps (the LR schedule's default step)
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        batching = settings.batching
        mult = math.lcm(batching.pad_to_multiple, sequence_multiple(settings.layout, settings.precision))
        if mult != batching.pad_to_multiple:  # SP splits the sequence over TP ranks; FP8 GEMMs need row multiples
            batching = BatchSettings(**{**batching.__dict__, "pad_to_multiple": mult})
        if uses_te and batching.packed:  # TE takes packed sequences as one thd row (PackedSeqParams)
            batching = BatchSettings(**{**batching.__dict__, "pack_length": None})
        self.batching = batching
        # Logits at response positions only (never at prompt or padding positions): engine/output_rows.py.
        self.rows = ResponseRowSelector(chunks)

    @classmethod
    def from_hf(cls, hf_dir: str | Path, settings: EngineSettings, loss_spec: LossSpec | None = None) -> "PolicyEngine":
        """Initialise parallel state, build this rank's chunks, load the HF weights, wrap, add the optimizer."""
        layout, precision = settings.layout, settings.precision
        _ensure_model_parallel(layout, settings.seed)
        arch = ArchSpec.from_hf_config(hf_dir)
        config = build_transformer_config(arch, layout, precision, dropout=settings.dropout)
        # Our losses carry global denominators: no division by tokens or micro-batches, DP grads summed.
        config.calculate_per_token_loss = True
        spec, uses_te = select_layer_spec(arch, want_te=settings.want_te, fp8=precision.fp8,
                                          sequence_parallel=layout.sequence_parallel)
        chunks = build_model_chunks(arch, config, spec)
        if torch.cuda.is_available():
            for c in chunks:
                c.cuda()
        load_hf_weights(chunks, arch, hf_dir, precision.params_dtype, te_names=uses_te)
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=False,
            use_distributed_optimizer=layout.use_distributed_optimizer)
        # Bucketing only for the first chunk, as megatron's training loop does with VPP.
        wrapped = [DistributedDataParallel(config, ddp_config, c, disable_bucketing=i > 0)
                   for i, c in enumerate(chunks)]
        config.finalize_model_grads_func = finalize_grads_without_token_scaling
        config.no_sync_func = [w.no_sync for w in wrapped] if len(wrapped) > 1 else wrapped[0].no_sync
        optimizer = build_optimizer(wrapped, settings.optim, layout, precision) if settings.trainable else None
        if optimizer is not None:  # the schedule scales the loss before backward (1.0 unless fp16)
            config.grad_scale_func = optimizer.scale_loss
        return cls(wrapped, optimizer, arch, settings, loss_spec, uses_te)

    @property
    def data_parallel_size(self) -> int:
        """How many DP ranks a pass splits its samples over (each needs at least one)."""
        return ps.get_data_parallel_world_size()

    # ----------------------------------------------------------------------------------- batches
    def _local_microbatches(self, samples: Sequence[PolicySample]) -> list[MicroBatch]:
        lengths = [s.length for s in samples]
        shares = split_across_dp(lengths, ps.get_data_parallel_world_size())
        count = microbatch_count(shares, self.batching)
        plan = plan_microbatches(shares[ps.get_data_parallel_rank()], lengths, count)
        groups = [[samples[i] for i in idx] for idx in plan]
        shape = None
        if ps.get_pipeline_model_parallel_world_size() > 1:
            # Pipeline p2p buffers have one [S, B, H] shape per step: pad every micro-batch to it
            # (cheaper than megatron's variable_seq_lengths, which exchanges shapes before every p2p).
            shapes = [microbatch_shape(g, self.batching) for g in groups]
            shape = (max(b for b, _ in shapes), max(s for _, s in shapes))
        return [build_microbatch(g, idx, self.batching, shape) for g, idx in zip(groups, plan)]

    def _run(self, microbatches: list[MicroBatch], step: ForwardStep, forward_only: bool) -> list[dict]:
        """One pass of megatron's schedule over the micro-batches; the last stages' loss metrics."""
        seq_len = max(mb.shape[1] for mb in microbatches)
        mbs = max(mb.shape[0] for mb in microbatches)
        if step.settings.packed_seq_params and self.batching.packed:
            seq_len, mbs = seq_len * mbs, 1
        n_chunks = len(self.chunks)
        data = [iter(microbatches) for _ in range(n_chunks)] if n_chunks > 1 else iter(microbatches)
        return get_forward_backward_func()(
            forward_step_func=step, data_iterator=data, model=self.chunks,
            num_microbatches=len(microbatches), seq_length=seq_len, micro_batch_size=mbs,
            forward_only=forward_only)

    def _logprob_settings(self, temperature: float | None = None) -> LogprobSettings:
        temp = self.settings.temperature if temperature is None else temperature
        return LogprobSettings(self.arch.vocab_size, temp,
                               packed_seq_params=self.uses_te and self.batching.packed)

    # ------------------------------------------------------------------------------------ passes
    @torch.no_grad()
    def compute_logprobs(self, samples: Sequence[PolicySample], *, temperature: float | None = None) -> LogprobOutput:
        """Forward only: response-token log-probs and entropies of every sample, on every rank.

        ``temperature`` overrides the rollout temperature (e.g. 1.0 to compare with raw server log-probs).
        """
        for c in self.chunks:
            c.eval()
        step = ForwardStep(self._logprob_settings(temperature), device=self.device, rows=self.rows)
        store = self._run(self._local_microbatches(samples), step,
                          forward_only=True)
        lps, ents = gather_logprobs(store, [len(s.response_ids) for s in samples])
        return LogprobOutput(lps, ents)

    def train_step(self, samples: Sequence[PolicySample], *, group_size: int | None = None,
                   counts: GlobalCounts | None = None, schedule_step: int | None = None) -> dict[str, float]:
        """One optimizer step over ``samples`` (the whole mini-batch, the same list on every rank).

        ``counts`` defaults to the samples' global counts with ``prompts = len(samples) / group_size``
        (docs/algorithm.md [otm-canonical]: P = |M| / G). ``schedule_step`` picks the LR (default: applied steps
        so far).
        """
        if self.loss_spec is None or self.optimizer is None:
            raise ValueError("this engine cannot train: build it with a LossSpec and trainable=True")
        if any(s.old_logprobs is None for s in samples):
            raise ValueError("train_step needs old_logprobs on every sample (the rollout's, or compute_logprobs)")
        counts = counts or global_counts(samples, group_size)
        _check_same_batch_everywhere(samples)
        for c in self.chunks:
            c.train()
            c.zero_grad_buffer()
        self.optimizer.zero_grad()
        lr = self.schedule.at(self.steps_done if schedule_step is None else schedule_step)
        set_lr(self.optimizer, lr)
        mbs = self._local_microbatches(samples)
        step = ForwardStep(self._logprob_settings(), self.loss_spec, counts, device=self.device, rows=self.rows)
        store = self._run(mbs, step, forward_only=False)
        totals = reduce_train_metrics(store, len(mbs))
        loss = float(totals["loss"])
        result = guarded_step(self.optimizer, loss, self.settings.optim.clip_grad)
        self.steps_done += int(result.applied)
        if not result.applied:
            log.warning("optimizer step skipped (%s); weights and optimizer state unchanged", result.reason)
        return _step_metrics(totals, result, lr, len(mbs))

    # ------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, directory: str | Path, extra: dict | None = None) -> None:
        """Model + optimizer (resharding-capable) + engine counters, with dist_checkpointing."""
        if self.optimizer is None:
            raise ValueError("a forward-only engine (trainable=False) has no optimizer state to checkpoint")
        state = {"steps_done": self.steps_done, **(extra or {})}
        dist_ckpt.save(directory, self.chunks, self.optimizer, state)

    def load_checkpoint(self, directory: str | Path) -> dict:
        """Load what :meth:`save_checkpoint` wrote (any layout); returns the saved extra state."""
        if self.optimizer is None:
            raise ValueError("load_checkpoint needs a trainable engine (the checkpoint holds optimizer state)")
        state = dist_ckpt.load(directory, self.chunks, self.optimizer)
        self.steps_done = int(state.pop("steps_done"))
        return state


def load_initial_weights(engine: "PolicyEngine", directory: str | Path) -> Path:
    """Replace the engine's weights by a megatron torch_dist checkpoint's (pretrain/SFT -> RL, no HF round trip)."""
    path = dist_ckpt.load_weights_only(directory, engine.chunks)
    # Optimizers that keep fp32 main copies of the weights (bf16 training) must copy the new weights too.
    if engine.optimizer is not None and hasattr(engine.optimizer, "reload_model_params"):
        engine.optimizer.reload_model_params()
    return path


def _ensure_model_parallel(layout: ParallelLayout, seed: int) -> None:
    """Initialise megatron's parallel state unless it already has this layout's sizes.

    A second engine of the same layout (e.g. a frozen reference policy) must not tear down the groups
    the first one uses; a different layout (tests, tools) re-initialises.
    """
    same = (ps.model_parallel_is_initialized()
            and ps.get_tensor_model_parallel_world_size() == layout.tp
            and ps.get_pipeline_model_parallel_world_size() == layout.pp
            and ps.get_virtual_pipeline_model_parallel_world_size() == layout.vpp)
    if not same:
        init_model_parallel(layout, seed)


def global_counts(samples: Sequence[PolicySample], group_size: int | None) -> GlobalCounts:
    """Counts of the whole step (every rank holds every sample, so no collective is needed)."""
    if not group_size or group_size < 1:
        raise ValueError("train_step needs group_size (responses per prompt) or explicit counts")
    tokens = sum(len(s.response_ids) for s in samples)
    return GlobalCounts(prompts=len(samples) / group_size, responses=float(len(samples)), tokens=float(tokens))


def _check_same_batch_everywhere(samples: Sequence[PolicySample]) -> None:
    """All ranks must pass the same samples (the split relies on it): compare a cheap fingerprint."""
    lengths = torch.tensor([s.length for s in samples], dtype=torch.float64)
    weights = torch.arange(1, len(samples) + 1, dtype=torch.float64)
    fp = torch.stack([torch.tensor(float(len(samples)), dtype=torch.float64), (lengths * weights).sum()])
    both = torch.cat([fp, -fp])
    if dist.get_backend() == "nccl":
        both = both.cuda()
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    both = both.cpu()
    if not torch.equal(both[:2], -both[2:]):
        raise ValueError("ranks passed different sample lists to train_step; every rank must pass the whole "
                         "mini-batch (the engine splits it over data-parallel ranks itself)")


def _step_metrics(totals: dict, result, lr: float, num_micro: int) -> dict[str, float]:
    clip = clip_ratios(totals["clip_per_micro"])
    tokens = float(totals["tokens"])
    return {
        "loss/total": float(totals["loss"]),
        "loss/policy": float(totals["policy_loss"]),
        "loss/kl": float(totals["kl"]),
        "loss/grad_norm": result.grad_norm,
        "loss/log_ratio_abs_max": float(totals["log_ratio_abs_max"]),
        "optim/lr": lr,
        "optim/skipped": float(not result.applied),
        "clip/token_clip_ratio": float(clip["token_clip_ratio"]),
        "clip/token_clip_ratio_global": float(clip["token_clip_ratio_global"]),
        "clip/low_ratio": float(clip["low_ratio"]),
        "clip/high_ratio": float(clip["high_ratio"]),
        "clip/dual_ratio": float(clip["dual_ratio"]),
        "clip/micro_batches": float(clip["micro_batches"]),
        "actor/entropy": float(totals["entropy_sum"]) / tokens if tokens else float("nan"),
        "actor/ppo_kl": float(totals["ppo_kl_sum"]) / tokens if tokens else float("nan"),
        "perf/response_tokens": tokens,
        "perf/num_microbatches": float(num_micro),
    }
