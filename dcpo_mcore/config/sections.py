"""Config sections other than `model` and `algo`: parallelism, rollout, reward, optimiser, data,
checkpointing and logging.

Field-local bounds live here as pydantic constraints; checks that relate two fields (possibly in
different sections) live in validation.py, where every field path is known.
Defaults follow the DCPO paper's recipe (docs/algorithm.md [defaults]) where it has one.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .base import Section


def _as_str_list(value: Any) -> Any:
    """Accept one string for a list field, and numbers inside it (CLI/YAML give `0.8`, not '0.8')."""
    if value is None:
        return value
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in value]
    return value


class ParallelConfig(Section):
    tensor_model_parallel_size: int = Field(
        1, ge=1, description="Tensor-parallel size (TP) of the training model; must divide heads and "
        "query groups.")
    pipeline_model_parallel_size: int = Field(
        1, ge=1, description="Pipeline-parallel size (PP); must divide model.num_layers.")
    virtual_pipeline_model_parallel_size: int | None = Field(
        None, ge=1, description="Interleaved (virtual) pipeline stages per PP rank; null = off. Needs "
        "PP > 1 and num_layers divisible by PP * VPP.")
    sequence_parallel: bool = Field(
        False, description="Megatron sequence parallelism (shards activations along the sequence over "
        "the TP group); needs TP > 1.")
    use_distributed_optimizer: bool = Field(
        True, description="Shard optimizer state over data-parallel ranks (megatron distributed "
        "optimizer).")
    recompute: Literal["none", "full", "selective"] = Field(
        "none", description="Activation recomputation: none, full (every layer) or selective "
        "(core attention only).")
    micro_batch_size: int = Field(
        1, ge=1, description="Responses per micro-batch on one data-parallel rank (gradient "
        "accumulation unit).")


class RolloutConfig(Section):
    server_urls: list[str] = Field(
        default_factory=list, description="Base URLs of running SGLang servers (or one router) to "
        "attach to, e.g. [http://node1:30000]; empty = launch num_servers servers.")
    num_servers: int = Field(
        description="SGLang servers to launch; default 1 when server_urls is empty, else 0. Set "
        "exactly one of server_urls / num_servers.")
    use_router: bool = Field(
        False, description="Put an sglang-router in front of the servers; needs more than one server.")
    server_tp_size: int = Field(
        1, ge=1, description="Tensor-parallel size of each launched SGLang server.")
    prompts_per_step: int = Field(
        512, ge=1, description="Prompts rolled out per training step (rollout batch; paper: 512).")
    n_samples_per_prompt: int = Field(
        16, ge=1, description="Responses sampled per prompt, the group size G (paper: 16); >= 2 for "
        "group standardisation.")
    temperature: float = Field(1.0, gt=0.0, description="Sampling temperature (paper: 1.0).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass in (0, 1] (paper: 1.0).")
    top_k: int = Field(-1, description="Top-k sampling; -1 = off (paper), else >= 1.")
    max_prompt_tokens: int = Field(
        1024, ge=1, description="Longest prompt in tokens; longer prompts are filtered (paper: 1024).")
    max_new_tokens: int = Field(
        3072, ge=1, description="Longest response in tokens (paper: 3072).")
    request_timeout_s: float = Field(
        600.0, gt=0.0, description="Timeout for one /generate request, seconds.")
    mismatch_bound: float = Field(
        0.05, gt=0.0, description="A step whose mean |trainer - SGLang| log-prob per response token "
        "exceeds this logs a warning and sets invariant/mismatch_within_bound = 0 (the servers may not "
        "be serving the trainer's weights). Checked on batches generated with the step's own policy only; "
        "with max_staleness >= 1 the gap is off-policyness and is reported, not checked.")
    max_concurrency: int = Field(
        256, ge=1, description="Most /generate requests in flight at once, over all servers.")
    max_staleness: int = Field(
        0, ge=0, description="K: generate the batches of steps s+1 .. s+K while step s trains, each sample at most "
        "K weight versions old when it is trained on (docs/algorithm.md [async-rollout]); 0 = on-policy, "
        "generation and training take turns.")
    push_mode: Literal["wait", "abort", "retract", "in_place"] = Field(
        "wait", description="What happens to generation in flight when new weights are pushed, with "
        "max_staleness >= 1: wait (the push waits until every batch that needs older weights is done; "
        "deterministic), or SGLang's pause_generation mode: abort (in-flight requests are aborted and "
        "regenerated with the new weights), retract (requeued; their cache is recomputed with the new "
        "weights) or in_place (they continue with the new weights on the old cache).")
    sglang_extra_args: list[str] = Field(
        default_factory=list, description="Extra command-line arguments for launched SGLang servers, "
        "e.g. [--mem-fraction-static, '0.8'].")

    @field_validator("server_urls", "sglang_extra_args", mode="before")
    @classmethod
    def _lists(cls, v: Any) -> Any:
        return _as_str_list(v)

    @model_validator(mode="before")
    @classmethod
    def _default_num_servers(cls, data: Any) -> Any:
        # "launch one" is the right default only when nothing is attached; an explicit value that
        # contradicts server_urls is reported by validation.py, not silently fixed here.
        if isinstance(data, dict) and "num_servers" not in data:
            data = {**data, "num_servers": 0 if data.get("server_urls") else 1}
        return data

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, v: int) -> int:
        if v != -1 and v < 1:
            raise ValueError("must be -1 (off) or >= 1")
        return v

    @field_validator("num_servers")
    @classmethod
    def _num_servers(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be >= 0")
        return v


class RewardConfig(Section):
    verifier: Literal["math", "exact_match"] = Field(
        "math", description="Answer checker: math (last \\boxed{} graded for mathematical equivalence) "
        "or exact_match (normalised string equality).")
    scheme: Literal["ternary", "binary"] = Field(
        "ternary", description="ternary: +1 correct, 0 wrong answer, -1 no parsable answer (paper A.4); "
        "binary: +1/-1. Use the same scheme for every method in a comparison (docs/algorithm.md [choice-same-reward]).")
    timeout_s: float = Field(3.0, gt=0.0, description="Per-response grading timeout, seconds (spec: 3).")
    num_workers: int = Field(4, ge=1, description="Grader worker processes.")


class OptimConfig(Section):
    lr: float = Field(1e-6, gt=0.0, description="Peak learning rate (paper: 1e-6).")
    min_lr: float = Field(0.0, ge=0.0, description="Final learning rate of cosine/linear decay; <= lr.")
    lr_schedule: Literal["constant", "cosine", "linear"] = Field(
        "constant", description="Schedule after warmup: constant (paper), cosine or linear decay to "
        "min_lr at the last step.")
    lr_warmup_steps: int = Field(
        10, ge=0, description="Linear warmup length in *training* steps (not optimizer steps; paper: "
        "10); < steps.")
    weight_decay: float = Field(0.1, ge=0.0, description="AdamW decoupled weight decay (paper: 0.1).")
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW beta1, in [0, 1).")
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0, description="AdamW beta2, in [0, 1).")
    adam_eps: float = Field(1e-8, gt=0.0, description="AdamW epsilon.")
    clip_grad: float = Field(1.0, gt=0.0, description="Global gradient-norm clipping threshold (paper: 1.0).")


class DataConfig(Section):
    train_files: list[str] = Field(
        default_factory=list, description="Training prompt files (.parquet or .jsonl, docs/algorithm.md [data-layout] "
        "layout); paths relative to the working directory. Checked to exist at launch.")
    eval_files: list[str] = Field(
        default_factory=list, description="Evaluation files (.parquet or .jsonl); empty = no evaluation.")
    prompt_key: Literal["source_index", "prompt_hash"] = Field(
        "source_index", description="Key of the per-prompt SAS statistics: source_index = "
        "'<data_source>:<extra_info.index>' or prompt_hash = hash of the prompt text (docs/algorithm.md [choice-prompt-key]).")
    on_bad_row: Literal["error", "skip"] = Field(
        "error", description="A malformed dataset row stops the run (error) or is skipped and counted (skip).")
    shuffle: bool = Field(True, description="Shuffle the training prompts each epoch (seeded by seed).")
    chat_template: Literal["tokenizer", "none"] = Field(
        "tokenizer", description="tokenizer: render the message list with the tokenizer's chat template "
        "(add_generation_prompt); none: concatenate message contents as raw text.")

    @field_validator("train_files", "eval_files", mode="before")
    @classmethod
    def _lists(cls, v: Any) -> Any:
        return _as_str_list(v)


class CheckpointConfig(Section):
    dir: str | None = Field(
        None, description="Checkpoint directory; null = <run_dir>/checkpoints.")
    save_interval: int = Field(
        10, ge=0, description="Save every this many training steps (paper: 10); 0 = only at the end.")
    keep_last: int = Field(3, ge=1, description="Checkpoints kept on disk; older ones are deleted.")
    resume: str = Field(
        "auto", min_length=1, description="auto: resume from the latest checkpoint in dir if any; "
        "never: start fresh; anything else: the checkpoint path to resume from.")


class LoggingConfig(Section):
    tensorboard: bool = Field(True, description="Write TensorBoard event files under <run_dir>/tb.")
    wandb: bool = Field(False, description="Log to Weights & Biases.")
    wandb_project: str = Field("dcpo-mcore", description="W&B project name (used when wandb is on).")
    console: bool = Field(True, description="Print a one-line progress summary on stderr.")
    log_interval: int = Field(1, ge=1, description="Print the console summary every this many training "
                              "steps (and at the first and last); metrics.jsonl, TensorBoard and W&B "
                              "record every step.")


class SyncConfig(Section):
    bucket_mb: int = Field(
        512, ge=1, description="Flattened weight-bucket size in MiB for the broadcast to SGLang.")
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="Broadcast backend; auto = nccl when the trainer has a GPU, else gloo. "
        "Always sent to SGLang explicitly (its default, nccl, hangs a CPU server).")
    master_address: str | None = Field(
        None, description="Address the SGLang workers use to reach trainer rank 0; null = 127.0.0.1 "
        "for local servers, else the local address of the route to the first server.")
    timeout_s: float = Field(
        600.0, gt=0.0, description="Limit for forming the group, one bucket's broadcast and one HTTP call.")
    max_attempts: int = Field(
        3, ge=1, description="Full re-pushes before a failed sync stops the run (the last one after "
        "restarting the failing server when we launched it).")
    verify_every: int = Field(
        1, ge=0, description="Compare trainer and SGLang log-probs on fixed sequences every this many "
        "syncs (metric sync/logprob_max_abs_diff); 0 = never.")
    verify_threshold: float | None = Field(
        None, gt=0.0, description="Stop the run when the max |trainer - SGLang| log-prob exceeds this; "
        "null = 1e-3 when both sides are float32, 0.25 otherwise.")
