"""Memory planner: per-GPU estimate of a trainer layout and the SGLang KV budget, before a job is submitted.

    cfg = load_config("configs/qwen2.5-14b_dcpo.yaml")
    plan = make_plan(cfg, cfg.launch)
    print(format_plan(plan)); problems = plan.problems   # [] = the layout fits

Pure functions of the config, the architecture and the launch settings; nothing is allocated.

What is counted, per GPU of the trainer (the worst pipeline stage):

* **weights**: the parameters this rank holds, counted exactly as megatron-core's GPTModel lays them out
  (vocab padded to a multiple of 128*TP, q/k/v fused and split over TP, norms replicated, the embedding on
  the first stage, the output layer on the last; a tied embedding is also kept on the last stage when
  PP > 1). ``tests/unit/test_plan.py`` checks the count against the real megatron model.
* **grads**: one fp32 ``main_grad`` per parameter (the engine's DDP uses ``grad_reduce_in_fp32=True``).
* **optimizer**: Adam m and v in fp32, plus an fp32 master copy when the parameters are 16-bit; divided by
  DP with the distributed optimizer.
* **fp8 weight copies**: with FP8 on, Transformer Engine keeps an FP8 copy of every linear weight (1 byte).
* **activations**: the tensors a layer saves for backward with flash attention (no s^2 term) and no dropout,
  per token: ``4h`` for the two norms' inputs/outputs (``/TP`` with sequence parallelism) plus
  ``(2q + 2kv + 3F) / TP`` for q/k/v, the attention output, the SwiGLU input (2F) and output (F). Full
  recompute keeps only each layer's input (``h``) and one layer's working set. The first pipeline stage
  holds PP micro-batches in flight (1F1B; interleaved adds ``(PP-1)/VPP``). A micro-batch is
  ``micro_batch_size`` padded sequences of ``max_prompt_tokens + max_new_tokens`` tokens.
* **logits**: the vocab-parallel log-prob op (ops/vocab_parallel.py) keeps only the ``[tokens, V/TP]``
  logits of the micro-batch, writes their gradient in place, and uses two chunk-sized scratch buffers.
* **overhead**: CUDA context, NCCL buffers and fragmentation, a fixed ``overhead_gib`` (launch settings).

The rollout side: each SGLang server holds the bf16 weights on its ``server_tp_size`` GPUs and uses
``--mem-fraction-static`` (from rollout.sglang_extra_args, else 0.8) of their memory for weights plus the
KV pool; the rest of that fraction is the KV budget, in tokens and in full-length sequences at once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dcpo_mcore.engine.hf_arch import ArchSpec, padded_vocab_size

from .settings import LaunchSettings

if TYPE_CHECKING:
    from dcpo_mcore.config import TrainConfig

GIB = 1024 ** 3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
DEFAULT_MEM_FRACTION = 0.8
# ops/vocab_parallel.py: 2**24 fp32 elements of scratch per chunk on an accelerator, plus one gathered copy.
LOGPROB_SCRATCH_BYTES = (1 << 24) * 4 * 2


# ----------------------------------------------------------------------------------------------- params
def arch_from_config(cfg: "TrainConfig") -> ArchSpec:
    """The ArchSpec of the policy: from model.hf_path/config.json when it exists (family, biases, tied
    embeddings), else a Qwen2-style model (q/k/v bias, untied) with the config's sizes, as the recipes
    ship them."""
    m = cfg.model
    if m.hf_path and (Path(m.hf_path) / "config.json").is_file():
        spec = ArchSpec.from_hf_config(m.hf_path)
        # explicit config fields win, exactly as in load_config
        return ArchSpec(**{**spec.__dict__, **{k: getattr(m, k) for k in (
            "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
            "vocab_size", "max_position_embeddings")}})
    return ArchSpec(
        family="qwen2", num_layers=m.num_layers, hidden_size=m.hidden_size, ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads, num_query_groups=m.num_query_groups,
        head_dim=m.hidden_size // m.num_attention_heads, vocab_size=m.vocab_size,
        max_position_embeddings=m.max_position_embeddings, rms_norm_eps=1e-6, rope_theta=1e6,
        rope_scaling=None, tie_word_embeddings=False, qkv_bias=True, qk_norm=False, torch_dtype=None)


def layer_params(arch: ArchSpec, tp: int) -> int:
    """Parameters of one transformer layer on one TP rank (megatron local or TE spec: same count)."""
    h, f = arch.hidden_size, arch.ffn_hidden_size
    qkv = arch.q_size + 2 * arch.kv_size
    n = 2 * h  # input_layernorm + pre_mlp_layernorm (RMSNorm weights, replicated over TP)
    n += h * qkv // tp + (qkv // tp if arch.qkv_bias else 0)  # linear_qkv (+ bias)
    n += 2 * arch.head_dim if arch.qk_norm else 0  # q_layernorm, k_layernorm (per head dim, replicated)
    n += arch.q_size * h // tp  # linear_proj
    n += h * 2 * f // tp + f * h // tp  # linear_fc1 (gate and up fused), linear_fc2
    return n


def linear_layer_params(arch: ArchSpec, tp: int) -> int:
    """The GEMM weights of one layer on one TP rank (what FP8 makes a 1-byte copy of)."""
    h, f = arch.hidden_size, arch.ffn_hidden_size
    return (h * (arch.q_size + 2 * arch.kv_size) + arch.q_size * h + 3 * h * f) // tp


def stage_params(arch: ArchSpec, tp: int, pp: int, stage: int) -> int:
    """Parameters held by one rank of pipeline stage ``stage`` (all its virtual chunks together)."""
    vocab = padded_vocab_size(arch.vocab_size, tp)
    n = (arch.num_layers // pp) * layer_params(arch, tp)
    if stage == 0:
        n += vocab * arch.hidden_size // tp  # embedding.word_embeddings
    if stage == pp - 1:
        n += arch.hidden_size  # decoder.final_layernorm
        if not arch.tie_word_embeddings or pp > 1:
            n += vocab * arch.hidden_size // tp  # output_layer (a tied copy when PP > 1)
    return n


def total_params(arch: ArchSpec, padded_to_tp: int | None = None) -> int:
    """Unique parameters of the whole model: the Hugging Face count, or megatron's (vocab padded for
    ``padded_to_tp``, every TP shard summed)."""
    vocab = arch.vocab_size if padded_to_tp is None else padded_vocab_size(arch.vocab_size, padded_to_tp)
    h = arch.hidden_size
    emb = vocab * h * (1 if arch.tie_word_embeddings else 2)
    return arch.num_layers * layer_params(arch, 1) + emb + h


# ----------------------------------------------------------------------------------------------- plan
@dataclass
class TrainerMemory:
    stage: int
    params: int
    bytes: dict[str, float]  # component -> bytes

    @property
    def total(self) -> float:
        return sum(self.bytes.values())


@dataclass
class RolloutBudget:
    num_servers: int
    server_tp_size: int
    mem_fraction: float
    weight_bytes: float  # per server, all its GPUs
    kv_bytes_per_token: float  # per server, all its GPUs
    kv_pool_bytes: float  # per server
    kv_tokens: int  # per server
    seq_tokens: int
    seqs_at_once: int  # full-length sequences per server at once
    batch_seqs: int  # rollout batch: prompts_per_step * n_samples
    waves: int  # rollout batch / (servers * seqs_at_once), rounded up


@dataclass
class Plan:
    arch: ArchSpec
    tp: int
    pp: int
    vpp: int | None
    dp: int | None
    world: int
    gpu_memory_gib: float
    gpu_name: str
    micro_batches: int | None
    stages: list[TrainerMemory]
    rollout: RolloutBudget | None
    problems: list[str] = field(default_factory=list)

    @property
    def worst(self) -> TrainerMemory:
        return max(self.stages, key=lambda s: s.total)


def trainer_world(cfg: "TrainConfig", launch: LaunchSettings) -> int:
    """Trainer ranks the launchers start for this config and launch settings."""
    return launch.train_nodes * train_procs_per_node(cfg, launch)


def train_procs_per_node(cfg: "TrainConfig", launch: LaunchSettings) -> int:
    if launch.train_procs_per_node is not None:
        return launch.train_procs_per_node
    if launch.gpus_per_node == 0:  # CPU node: one model replica per node
        return cfg.parallel.tensor_model_parallel_size * cfg.parallel.pipeline_model_parallel_size
    return launch.gpus_per_node - (launch.colocated_rollout_gpus if launch.colocated else 0)


def servers_per_node(cfg: "TrainConfig", launch: LaunchSettings) -> int:
    if launch.servers_per_node is not None:
        return launch.servers_per_node
    gpus = launch.colocated_rollout_gpus if launch.colocated else launch.gpus_per_node
    return max(1, gpus // cfg.rollout.server_tp_size)


def num_rollout_servers(cfg: "TrainConfig", launch: LaunchSettings) -> int:
    if launch.colocated:
        if launch.gpus_per_node == 0 or launch.colocated_rollout_gpus == 0:  # servers the config launches
            return 0 if cfg.rollout.server_urls else max(1, cfg.rollout.num_servers)
        return servers_per_node(cfg, launch) * launch.train_nodes
    return servers_per_node(cfg, launch) * launch.rollout_nodes


def activation_bytes(arch: ArchSpec, cfg: "TrainConfig", tp: int, tokens: int, layers: int, inflight: float) -> float:
    p = cfg.parallel
    act = 2 if cfg.model.params_dtype == "bfloat16" else 4
    sp_div = tp if p.sequence_parallel else 1
    h, f = arch.hidden_size, arch.ffn_hidden_size
    per_token_layer = 4 * h / sp_div + (2 * arch.q_size + 2 * arch.kv_size + 3 * f) / tp  # elements
    if p.recompute == "full":
        stored = inflight * tokens * layers * (h / sp_div) * act  # each layer's input
        working = tokens * per_token_layer * act  # one layer recomputed at a time
        return stored + working
    return inflight * tokens * layers * per_token_layer * act


def trainer_memory(arch: ArchSpec, cfg: "TrainConfig", dp: int, stage: int, micro_batches: int) -> TrainerMemory:
    p = cfg.parallel
    tp, pp, vpp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.virtual_pipeline_model_parallel_size
    n = stage_params(arch, tp, pp, stage)
    wbytes = DTYPE_BYTES[cfg.model.params_dtype]
    opt_per_param = 8 + (4 if wbytes < 4 else 0)  # m, v (+ fp32 master for 16-bit params)
    opt_div = dp if p.use_distributed_optimizer else 1
    layers = arch.num_layers // pp
    tokens = p.micro_batch_size * (cfg.rollout.max_prompt_tokens + cfg.rollout.max_new_tokens)
    if pp > 1:  # 1F1B: stage s holds (pp - s) micro-batches; interleaving adds (pp-1)/vpp on stage 0
        inflight = min(pp - stage + ((pp - 1) / vpp if vpp else 0), max(1, micro_batches))
    else:
        inflight = 1
    out = {
        "weights": n * wbytes,
        "grads": n * 4,
        "optimizer": n * opt_per_param / opt_div,
        "fp8 weight copies": layers * linear_layer_params(arch, tp) if cfg.model.fp8 else 0,
        "activations": activation_bytes(arch, cfg, tp, tokens, layers, inflight),
        "logits": (tokens * padded_vocab_size(arch.vocab_size, tp) / tp * wbytes + LOGPROB_SCRATCH_BYTES
                   if stage == pp - 1 else 0),
    }
    return TrainerMemory(stage=stage, params=n, bytes=out)


def _mem_fraction(extra_args: list[str]) -> float:
    for i, a in enumerate(extra_args):
        if a.startswith("--mem-fraction-static"):
            value = a.split("=", 1)[1] if "=" in a else (extra_args[i + 1] if i + 1 < len(extra_args) else "")
            try:
                return float(value)
            except ValueError:
                break
    return DEFAULT_MEM_FRACTION


def rollout_budget(arch: ArchSpec, cfg: "TrainConfig", launch: LaunchSettings) -> RolloutBudget | None:
    r = cfg.rollout
    servers = num_rollout_servers(cfg, launch)
    if launch.gpus_per_node == 0 or servers == 0:
        return None
    tp_r, frac = r.server_tp_size, _mem_fraction(r.sglang_extra_args)
    weights = total_params(arch) * 2  # served in bf16
    kv_heads = max(arch.num_query_groups, tp_r)  # SGLang replicates KV heads when TP > kv heads
    kv_per_token = 2 * arch.num_layers * kv_heads * arch.head_dim * 2
    pool = frac * launch.gpu_memory_gib * GIB * tp_r - weights
    tokens = max(0, int(pool // kv_per_token))
    seq = r.max_prompt_tokens + r.max_new_tokens
    at_once = tokens // seq
    batch = r.prompts_per_step * r.n_samples_per_prompt
    waves = math.ceil(batch / (servers * at_once)) if at_once else 0
    return RolloutBudget(servers, tp_r, frac, weights, kv_per_token, pool, tokens, seq, at_once, batch, waves)


def make_plan(cfg: "TrainConfig", launch: LaunchSettings, arch: ArchSpec | None = None) -> Plan:
    """The plan, with ``problems`` (one line each) when the layout cannot run."""
    from dcpo_mcore.config import ConfigError, check_world_size

    arch = arch or arch_from_config(cfg)
    p = cfg.parallel
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    world = trainer_world(cfg, launch)
    problems: list[str] = []
    if launch.gpus_per_node and launch.colocated and launch.colocated_rollout_gpus >= launch.gpus_per_node:
        problems.append(f"launch: colocated_rollout_gpus={launch.colocated_rollout_gpus} leaves no GPU of "
                        f"gpus_per_node={launch.gpus_per_node} for the trainer; lower it")
    dp = micro = None
    try:
        dp = check_world_size(cfg, world)
    except ConfigError as exc:
        problems.append(str(exc).splitlines()[0] + f" (world = {launch.train_nodes} train node(s) x "
                        f"{train_procs_per_node(cfg, launch)} ranks)")
    if dp:
        micro = cfg.algo.mini_batch_prompts * cfg.rollout.n_samples_per_prompt // (dp * p.micro_batch_size)
    stages = [trainer_memory(arch, cfg, dp or 1, s, micro or 1) for s in range(pp)]
    rollout = rollout_budget(arch, cfg, launch)
    plan = Plan(arch, tp, pp, p.virtual_pipeline_model_parallel_size, dp, world, launch.gpu_memory_gib,
                launch.gpu_name, micro, stages, rollout, problems)
    if launch.gpus_per_node:
        need = plan.worst.total + launch.overhead_gib * GIB
        if need > launch.gpu_memory_gib * GIB:
            parts = ", ".join(f"{k} {v / GIB:.1f}" for k, v in plan.worst.bytes.items() if v)
            problems.append(
                f"out of memory: TP{tp} PP{pp} DP{dp or '?'} needs {need / GIB:.1f} GiB per GPU on stage "
                f"{plan.worst.stage} ({parts}, overhead {launch.overhead_gib:.1f}) > {launch.gpu_memory_gib:g} GiB "
                f"({launch.gpu_name}); raise TP/PP or nodes, use parallel.use_distributed_optimizer=true, "
                "parallel.recompute=full, or a smaller parallel.micro_batch_size")
        if rollout is not None and rollout.seqs_at_once < 1:
            problems.append(
                f"rollout: an SGLang server with server_tp_size={rollout.server_tp_size} has "
                f"{rollout.kv_pool_bytes / GIB:.1f} GiB for KV after {rollout.weight_bytes / GIB:.1f} GiB of weights "
                f"(mem fraction {rollout.mem_fraction:g}), less than one {rollout.seq_tokens}-token sequence; "
                "raise rollout.server_tp_size or --mem-fraction-static")
        if not launch.colocated and rollout is not None and cfg.rollout.num_servers not in (0, rollout.num_servers):
            problems.append(
                f"rollout.num_servers: {cfg.rollout.num_servers} but the launch settings give "
                f"{launch.rollout_nodes} rollout node(s) x {servers_per_node(cfg, launch)} server(s) = "
                f"{rollout.num_servers}; make them agree")
    return plan


def _count(n: float) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.3f} M" if n >= 1e5 else f"{int(n):,}"


def _gib(x: float) -> str:
    return f"{x / GIB:8.2f} GiB"


def format_plan(plan: Plan) -> str:
    a = plan.arch
    lines = [
        f"model: {a.family}, {a.num_layers} layers, hidden {a.hidden_size}, ffn {a.ffn_hidden_size}, heads "
        f"{a.num_attention_heads}/{a.num_query_groups} kv, vocab {a.vocab_size}: "
        f"{_count(total_params(a))} parameters (HF count)",
        f"trainer: {plan.world} ranks = TP{plan.tp} x PP{plan.pp}"
        + (f" (VPP {plan.vpp})" if plan.vpp else "") + f" x DP{plan.dp or '?'}; "
        f"{plan.micro_batches or '?'} micro-batches per optimizer step per DP rank",
    ]
    for st in plan.stages if plan.pp <= 2 else [plan.stages[0], plan.stages[-1]]:
        lines.append(f"  per GPU, pipeline stage {st.stage} ({_count(st.params)} params on this rank):")
        lines += [f"    {k:<18}{_gib(v)}" for k, v in st.bytes.items()]
        lines.append(f"    {'total':<18}{_gib(st.total)}")
    w = plan.worst
    lines.append(f"  worst stage {w.stage}: {w.total / GIB:.2f} GiB + overhead, of {plan.gpu_memory_gib:g} GiB "
                 f"({plan.gpu_name})")
    r = plan.rollout
    if r is not None:
        lines += [
            f"rollout: {r.num_servers} SGLang server(s) x TP{r.server_tp_size}, mem fraction {r.mem_fraction:g}",
            f"  per server: weights {r.weight_bytes / GIB:.1f} GiB, KV pool {r.kv_pool_bytes / GIB:.1f} GiB = "
            f"{r.kv_tokens:,} tokens ({r.kv_bytes_per_token / 1024:.0f} KiB/token) = {r.seqs_at_once} full "
            f"{r.seq_tokens}-token sequences at once",
            f"  rollout batch {r.batch_seqs} sequences: {r.waves} wave(s) of {r.num_servers * r.seqs_at_once} "
            "at worst-case length",
        ]
    else:
        lines.append("rollout: no GPU budget to plan (CPU node or attached servers)")
    lines.append("OK: the layout fits" if not plan.problems else "PROBLEMS:\n" + "\n".join(
        f"  {p}" for p in plan.problems))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``tools/plan.py CONFIG [key=value ...]``: print the plan for the config's ``launch:`` section; exit
    2 if it cannot run."""
    import argparse
    import sys

    from dcpo_mcore.config import ConfigError, load_config

    from .settings import LaunchError, LaunchSettings

    ap = argparse.ArgumentParser(prog="plan", description="Per-GPU memory estimate and rollout KV budget of a "
                                 "config; exits 2 with a one-line error when the layout cannot run.")
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides, as for dcpo-train")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        launch = cfg.launch
        if launch is None:  # no launch section: one model replica (DP 1) on 80 GiB GPUs
            p = cfg.parallel
            launch = LaunchSettings(train_procs_per_node=p.tensor_model_parallel_size * p.pipeline_model_parallel_size)
        plan = make_plan(cfg, launch)
    except (ConfigError, LaunchError) as exc:
        lines = str(exc).splitlines()
        more = f" (and {len(lines) - 1} more problem(s))" if len(lines) > 1 else ""
        print(f"plan: error: {lines[0]}{more}", file=sys.stderr)
        return 2
    print("launch settings: " + ("the config's launch section" if cfg.launch is not None
                                 else "none (one model replica, DP 1, on 80 GiB GPUs)"))
    print(format_plan(plan))
    if plan.problems:
        more = f" (and {len(plan.problems) - 1} more problem(s))" if len(plan.problems) > 1 else ""
        print(f"plan: error: {plan.problems[0]}{more}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
