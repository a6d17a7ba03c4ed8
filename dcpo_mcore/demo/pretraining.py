"""The demo's pretraining stage: supervised next-token training through OUR megatron policy engine.

``pretrain(hf_dir, out_dir, train_records, eval_records, settings)`` builds a
:class:`~dcpo_mcore.engine.policy.PolicyEngine` from the random model in ``hf_dir`` with the ``nll`` token
objective (advantage 1, ``token_mean``: the mean cross-entropy of the response tokens), trains on
``prompt -> \\boxed{answer}<eos>`` batches, measures held-out greedy accuracy every ``eval_every`` steps
(:mod:`.greedy`), and stops as soon as it reaches ``target_accuracy`` -- on accuracy, not after a fixed
number of steps: where the jump comes depends on the seed (docs/platform.md [demo-calibration]) -- or when
``max_steps`` / ``max_seconds`` run out. The final weights are written to ``out_dir`` as an HF checkpoint
directory (config, tokenizer, ``model.safetensors``) with the same streaming export ``dcpo-convert``
uses, ready for SGLang and ``PolicyEngine.from_hf``.

"More pretraining for the same time" (the baseline the README reports beside the RL gain)::

    base = pretrain(hf, "pre", train, held_out, PretrainSettings(save_mcore_checkpoint=True))
    more = pretrain(hf, "pre_more", train, held_out,
                    PretrainSettings(target_accuracy=None, max_seconds=rl_seconds), init="pre")

With ``init`` the run continues from that earlier output: its weights, and when it holds an ``mcore/``
checkpoint (``save_mcore_checkpoint``) also the Adam state, the step count and the data cursor, so the
continuation is the same run carried on.

Distributed: every rank calls ``pretrain`` with the same arguments. If ``torch.distributed`` is not
initialised yet, a world of one is set up from env defaults (RANK=0, WORLD_SIZE=1, a free local port).
Evaluation runs on global rank 0; the stop decision is broadcast so all ranks stop at the same step.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from dcpo_mcore.algo import GlobalCounts, LossSpec, NllParams
from dcpo_mcore.data import PromptCursor
from dcpo_mcore.engine import collectives as comm
from dcpo_mcore.engine.batching import BatchSettings, PolicySample
from dcpo_mcore.engine.layout import ParallelLayout, Precision
from dcpo_mcore.engine.optimizer import OptimSettings
from dcpo_mcore.world_env import single_process_env_defaults

from .greedy import HfMirror, greedy_accuracy
from dcpo_mcore.errors import UserValueError

__all__ = ["MCORE_SUBDIR", "NLL_LOSS", "PretrainResult", "PretrainSettings", "answer_ids", "engine_settings",
           "pretrain", "records_from_files", "save_hf_checkpoint"]

NLL_LOSS = LossSpec(objective="nll", objective_params=NllParams(), aggregation="token_mean")
MCORE_SUBDIR = "mcore"  # out_dir/mcore: torch_dist checkpoint (weights + Adam state + step + cursor)


@dataclass(frozen=True)
class PretrainSettings:
    """How long and how to pretrain. Defaults follow the calibration in docs/platform.md [demo-calibration]."""

    batch_size: int = 128  # sequences per optimizer step
    lr: float = 2e-3  # AdamW, constant after warmup
    weight_decay: float = 0.01  # torch.optim.AdamW's default, as in the plain-PyTorch calibration
    warmup_steps: int = 0
    clip_grad: float = 1.0
    target_accuracy: float | None = 0.35  # stop once held-out greedy accuracy >= this; None: never
    eval_every: int = 25  # steps between held-out evaluations (also one at the end); ~0.3 s each
    eval_at_start: bool = False  # evaluate before the first step too (the untrained model)
    max_steps: int | None = None  # optimizer steps in this call
    max_seconds: float | None = 600.0  # wall time of this call's loop (steps + evals), checked after each step
    max_new_tokens: int = 12  # greedy decode budget: "\boxed{810}" + eos is 11 tokens
    seed: int = 0  # engine seed and data order
    layout: ParallelLayout = field(default_factory=ParallelLayout)
    micro_batch_size: int | None = None  # None: the whole batch in one micro-batch (fastest on CPU)
    packed: bool = False  # packed rows: dense block masks over the whole row, 7-12x slower here; keep padded
    verifier: str = "math"  # dcpo_mcore.reward verifier that grades the greedy answers
    eval_threads: int | None = 1  # torch threads while decoding: tiny ops, 1 is fastest (far faster on a busy CPU)
    log_every: int = 25  # progress line every N steps (and at every eval)
    save_mcore_checkpoint: bool = False  # also write out_dir/mcore (lets a later call continue exactly)


@dataclass
class PretrainResult:
    out_dir: Path
    steps: int  # optimizer steps applied in this call
    total_steps: int  # including those of an ``init`` checkpoint
    seconds: float  # wall time of the loop (steps + evals); engine build and final save not included
    train_seconds: float
    eval_seconds: float
    train_cpu_seconds: float  # process CPU time of the steps (less sensitive than wall time to a busy machine)
    history: list[tuple[int, float]]  # (total step, held-out greedy accuracy)
    losses: list[tuple[int, float]]  # (total step, mean response-token cross-entropy)
    final_accuracy: float
    reached_target: bool
    stop_reason: str  # "target", "max_steps" or "max_seconds"

    @property
    def seconds_per_step(self) -> float:
        return self.train_seconds / self.steps if self.steps else float("nan")

    @property
    def cpu_seconds_per_step(self) -> float:
        return self.train_cpu_seconds / self.steps if self.steps else float("nan")


def answer_ids(tokenizer, ground_truth: str) -> list[int]:
    """The response the model is taught: ``\\boxed{ANSWER}`` then eos."""
    return tokenizer(f"\\boxed{{{ground_truth}}}", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def records_from_files(tokenizer, files) -> list:
    """PromptRecords of the task files (``make_arithmetic_task``), raw question prompts (no chat template)."""
    from dcpo_mcore.data import load_prompt_dataset

    return list(load_prompt_dataset(files, tokenizer, chat_template="none").records)


def engine_settings(s: PretrainSettings):
    """The PolicyEngine settings of a pretraining run (float32, AdamW with the run's lr and decay)."""
    from dcpo_mcore.engine.policy import EngineSettings

    optim = OptimSettings(lr=s.lr, weight_decay=s.weight_decay, lr_warmup_steps=s.warmup_steps,
                          clip_grad=s.clip_grad)
    batching = BatchSettings(micro_batch_size=s.micro_batch_size or s.batch_size, packed=s.packed)
    return EngineSettings(layout=s.layout, precision=Precision(params_dtype=torch.float32), optim=optim,
                          batching=batching, seed=s.seed)


def pretrain(hf_dir: str | Path, out_dir: str | Path, train_records: Sequence, eval_records: Sequence,
             settings: PretrainSettings = PretrainSettings(), *, init: str | Path | None = None,
             log: Callable[[str], None] | None = print) -> PretrainResult:
    """Train until held-out greedy accuracy >= ``settings.target_accuracy`` (or a limit); save to ``out_dir``.

    ``train_records`` / ``eval_records``: PromptRecord-like (``prompt_ids``, ``ground_truth``).
    ``init``: an earlier ``pretrain`` output to continue from (weights from it instead of ``hf_dir``; its
    ``mcore/`` checkpoint, if any, restores Adam state, step count and data cursor). ``log``: one line per
    progress report on rank 0 (None: silent). Returns a :class:`PretrainResult` (on every rank).
    """
    s = settings
    _check(s, train_records, eval_records)
    run = _Run(Path(init) if init is not None else Path(hf_dir), s, train_records, eval_records,
               resume=init is not None, log=log)
    acc, reason, begin = float("nan"), "", time.perf_counter()
    if s.eval_at_start:
        acc = run.evaluate()
        run.say(f"pretrain step {run.step:5d}  held-out greedy acc {acc:.3f}  (start)")
    while not reason:
        loss = run.train_step()
        elapsed = time.perf_counter() - begin
        out_of_steps = s.max_steps is not None and run.steps >= s.max_steps
        out_of_time = comm.broadcast_object(s.max_seconds is not None and elapsed >= s.max_seconds)
        if run.step % s.eval_every == 0 or out_of_steps or out_of_time:
            acc = run.evaluate()
            run.say(f"pretrain step {run.step:5d}  loss {loss:.4f}  held-out greedy acc {acc:.3f}  elapsed "
                    f"{time.perf_counter() - begin:6.1f} s  ({run.train_s / run.steps:.3f} s/step, "
                    f"eval {run.last_eval_s:.2f} s)")
            if s.target_accuracy is not None and acc >= s.target_accuracy:
                reason = "target"
        elif run.step % s.log_every == 0:
            run.say(f"pretrain step {run.step:5d}  loss {loss:.4f}  elapsed {elapsed:6.1f} s  "
                    f"({run.train_s / run.steps:.3f} s/step)")
        reason = reason or ("max_steps" if out_of_steps else "max_seconds" if out_of_time else "")
    seconds = time.perf_counter() - begin
    run.save(Path(out_dir))
    run.say(f"pretrain: stopped at step {run.step} ({reason}), held-out greedy acc {acc:.3f}, {seconds:.1f} s "
            f"({run.train_s:.1f} s training, {run.eval_s:.1f} s eval); saved {out_dir}")
    return PretrainResult(Path(out_dir), run.steps, run.step, seconds, run.train_s, run.eval_s, run.cpu_s,
                          run.history, run.losses, acc, reason == "target", reason)


def _check(s: PretrainSettings, train_records: Sequence, eval_records: Sequence) -> None:
    if s.batch_size > len(train_records):
        raise UserValueError(f"batch_size {s.batch_size} > {len(train_records)} training records")
    if not eval_records:
        raise UserValueError("pretrain needs held-out records to measure greedy accuracy on")
    if s.eval_every < 1:
        raise UserValueError(f"eval_every must be >= 1, got {s.eval_every}")
    if s.target_accuracy is None and s.max_steps is None and s.max_seconds is None:
        raise UserValueError("pretrain would never stop: set target_accuracy, max_steps or max_seconds")


class _Run:
    """The state of one pretraining call: engine, data cursor, HF mirror for evaluation, counters."""

    def __init__(self, source: Path, s: PretrainSettings, train_records: Sequence, eval_records: Sequence, *,
                 resume: bool, log: Callable[[str], None] | None):
        from transformers import AutoTokenizer

        from dcpo_mcore.engine.policy import PolicyEngine
        from dcpo_mcore.reward import get_verifier

        self.source, self.s, self.train_records, self.eval_records = source, s, train_records, eval_records
        single_process_env_defaults()
        self.engine = PolicyEngine.from_hf(source, engine_settings(s), NLL_LOSS)
        self.rank0 = comm.rank() == 0
        self.say = log if (log is not None and self.rank0) else (lambda _msg: None)
        self.cursor = PromptCursor(len(train_records), s.batch_size, shuffle=True, seed=s.seed)
        self.start_step = 0
        if resume and (source / MCORE_SUBDIR).is_dir():
            extra = self.engine.load_checkpoint(source / MCORE_SUBDIR)
            self.cursor.load_state_dict(extra["cursor"])
            self.start_step = self.engine.steps_done
            self.say(f"pretrain: continuing from {source} at step {self.start_step} "
                     "(Adam state and data cursor restored)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(source))
        self.verifier = get_verifier(s.verifier)
        self.mirror = HfMirror(source, self.rank0)
        self.responses = [answer_ids(self.tokenizer, r.ground_truth) for r in train_records]
        self.steps = 0
        self.train_s = self.eval_s = self.cpu_s = self.last_eval_s = 0.0
        self.history: list[tuple[int, float]] = []
        self.losses: list[tuple[int, float]] = []

    @property
    def step(self) -> int:
        return self.start_step + self.steps

    def train_step(self) -> float:
        t0, c0 = time.perf_counter(), time.process_time()
        batch = [_sample(self.train_records[i], self.responses[i]) for i in self.cursor.next_batch()]
        loss = self.engine.train_step(batch, counts=_counts(batch))["loss/total"]
        self.train_s += time.perf_counter() - t0
        self.cpu_s += time.process_time() - c0
        self.steps += 1
        self.losses.append((self.step, loss))
        return loss

    def evaluate(self) -> float:
        """Held-out greedy accuracy of the current weights (decoded on rank 0, the same value on every rank)."""
        t0 = time.perf_counter()
        self.mirror.refresh(self.engine)
        acc = 0.0
        if self.rank0:
            threads = torch.get_num_threads()
            torch.set_num_threads(self.s.eval_threads or threads)
            try:
                acc = greedy_accuracy(self.mirror.model, self.tokenizer, self.eval_records, self.verifier,
                                      self.s.max_new_tokens)[0]
            finally:
                torch.set_num_threads(threads)
        acc = comm.broadcast_object(acc)
        self.last_eval_s = time.perf_counter() - t0
        self.eval_s += self.last_eval_s
        self.history.append((self.step, acc))
        return acc

    def save(self, out_dir: Path) -> None:
        save_hf_checkpoint(self.engine, self.source, out_dir)
        if self.s.save_mcore_checkpoint:
            self.engine.save_checkpoint(out_dir / MCORE_SUBDIR, extra={"cursor": self.cursor.state_dict()})


def _sample(record, response: list[int]) -> PolicySample:
    # old_logprobs are required by train_step; the nll objective ignores them.
    return PolicySample(record.prompt_ids, response, advantage=1.0, old_logprobs=torch.zeros(len(response)))


def _counts(batch: Sequence[PolicySample]) -> GlobalCounts:
    n = float(len(batch))
    return GlobalCounts(prompts=n, responses=n, tokens=float(sum(len(b.response_ids) for b in batch)))


def save_hf_checkpoint(engine, meta_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the engine's weights as an HF directory (collective; rank 0 writes).

    Weights stream through :func:`~dcpo_mcore.engine.hf_export.stream_hf_tensors` into the
    ``dcpo-convert`` safetensors writer; config and tokenizer files are copied from ``meta_dir``. The
    directory appears complete or not at all (written to ``OUT.partial``, then renamed over ``OUT``).
    """
    from dcpo_mcore.convert.hf_io import SafetensorsStreamWriter, copy_meta_files
    from dcpo_mcore.engine.hf_export import stream_hf_tensors
    from dcpo_mcore.engine.hf_mapping import expected_hf_shapes

    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    rank0 = comm.rank() == 0
    writer, dtype = None, engine.settings.precision.params_dtype
    if rank0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        writer = SafetensorsStreamWriter(partial, expected_hf_shapes(engine.arch), dtype, 2 * 10**9)
    try:
        stream_hf_tensors(engine.chunks, engine.arch, engine.uses_te,
                          (lambda name, t: writer.write(name, t.to(dtype))) if rank0 else None)
    finally:
        if writer is not None:
            writer.abort()
    if rank0:
        writer.finish()
        copy_meta_files(Path(meta_dir), partial)
        if out_dir.exists():
            old = out_dir.with_name(out_dir.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            partial.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            partial.rename(out_dir)
    comm.broadcast_object(None)  # barrier: the directory exists on return, on every rank
    return out_dir
