"""Avg@1 / Avg@k evaluation: SGLang samples of held-out math problems, graded by the verifier.

    settings = EvalSettings()                                   # Avg@1: greedy, one sample per problem
    settings = EvalSettings(greedy=False)                       # Avg@k, k = replica count (32 on AIME/AMC)
    settings = EvalSettings(greedy=False, k=4, max_problems=10) # a quick periodic check
    result = evaluate(client, dataset, pool, settings, tokenizer=tok, step=step)
    sinks.log(step, result.metrics)       # eval/<dataset>/avg@1, eval/<dataset>/format_error_ratio, ...
    result.write("eval.json")             # summary JSON + eval.problems.jsonl (one row per problem)

Definitions (docs/algorithm.md [avg-at-k])
------------------------------------------
* A **problem** is a unique prompt key of the dataset, in order of first appearance. Replica rows
  (the shipped AIME24/25 and AMC23 parquets hold 32 identical rows per problem, MATH500 one) are
  never evaluated as separate problems, whether the loader collapsed them (``dedup_replicas=True``)
  or kept them: the result is the same either way.
* **k**, the samples drawn per problem:
  - ``greedy=True`` (Avg@1): temperature 0, k = 1. ``k`` must be None or 1: temperature 0 gives the
    same answer every time, so more samples would cost time and change nothing.
  - ``greedy=False``, ``k`` given: k samples at T=1.0, top_p=1.0, top_k=-1 for every problem.
  - ``greedy=False``, ``k=None``: k = ``dataset.replica_counts[key]``, the number of rows the files
    ship for that problem. The reference run's Avg@32 is exactly this (32 replica rows sampled once
    each), so AIME/AMC get 32 samples and MATH500 gets 1; the rule ignores ``dedup_replicas``.
* **Avg@k** of a dataset = mean over its problems of (correct samples / samples of that problem).
  Every problem weighs the same, whatever its k.
* A **dataset** is the set of records sharing a ``data_source`` (so one PromptDataset loaded from
  several files reports each benchmark on its own), or everything when ``name=`` is given. Its
  metric keys are ``eval/<name>/...`` with ``/`` and spaces in the name replaced by ``_``.
  ``max_problems`` keeps the first N problems of EACH dataset.

Metrics per dataset (floats): ``<label>`` (the accuracy; label ``avg@1`` for greedy, ``avg@<k>``
sampled, ``avg@1_sampled`` for sampled k=1 so it never overwrites the greedy number, ``avg@k`` when
problems have different k), ``format_error_ratio`` (samples without a parsable ``\\boxed{}``),
``truncated_ratio`` (samples cut at max_new_tokens), ``response_length_mean`` (tokens),
``grading_timeout_ratio`` (answers the verifier timed out on: scored wrong), ``problems``,
``samples_per_problem``.

Seeds: each sample is sent under the prompt key ``"<key>#eval<seed>"``, so a client built with a
seed gives it ``derive_seed(client_seed, step, key#eval<seed>, j)``: the same samples for the same
(seed, step) and different ones from the training rollouts of that prompt. Servers honour seeds only
with deterministic inference (GPU); a client without a seed sends none.

Work is done in chunks of problems (about ``chunk_samples`` samples each): chunk i is graded in a
thread while chunk i+1 generates, and ``progress=True`` prints one line per chunk.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, TextIO

from dcpo_mcore.metrics.progress import format_duration

if TYPE_CHECKING:  # the wire models load pydantic (~0.4 s): dcpo-eval --help and its input checks do without
    from dcpo_mcore.rollout.wire import GenerateResponse, SamplingParams

__all__ = ["EvalResult", "EvalSettings", "ProblemResult", "dataset_name", "evaluate", "evaluate_async",
           "metric_label", "plan_problems", "summarize"]

DEFAULT_CHUNK_SAMPLES = 256  # when the client does not say its concurrency


@dataclass(frozen=True)
class EvalSettings:
    """What one evaluation draws; see the module docstring for the k rule."""

    k: int | None = None  # samples per problem; None: 1 greedy, the problem's replica count sampled
    greedy: bool = True  # True: temperature 0 (Avg@1); False: T=1.0, top_p=1.0, top_k=-1 (Avg@k)
    max_new_tokens: int = 3072  # the paper's max response length
    seed: int = 0  # mixed into the per-sample seeds (module docstring)
    max_problems: int | None = None  # evaluate only the first N problems of each dataset

    def __post_init__(self):
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"k must be a positive int or None, not {self.k!r}")
        if self.greedy and self.k not in (None, 1):
            raise ValueError(f"k={self.k} with greedy decoding: temperature 0 gives the same answer every time; "
                             "use k=1 for Avg@1 or greedy=False for Avg@k")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, not {self.max_new_tokens}")
        if self.max_problems is not None and self.max_problems < 1:
            raise ValueError(f"max_problems must be >= 1 or None, not {self.max_problems}")

    def samples_for(self, replicas: int) -> int:
        """k for a problem that has ``replicas`` rows in the files."""
        if self.greedy:
            return 1
        return self.k if self.k is not None else max(1, int(replicas))

    def sampling_params(self) -> SamplingParams:
        """What every request carries: greedy (temperature 0) or the paper's T=1.0, top_p=1.0."""
        from dcpo_mcore.rollout.wire import SamplingParams

        temperature = 0.0 if self.greedy else 1.0
        return SamplingParams(temperature=temperature, top_p=1.0, top_k=-1, max_new_tokens=self.max_new_tokens)


@dataclass(frozen=True)
class ProblemResult:
    """One problem's outcome (one JSONL row). ``responses``/``preds`` only with keep_responses."""

    key: str
    dataset: str
    ground_truth: str
    n_correct: int
    n: int
    format_errors: int = 0  # samples without a parsable \boxed{}
    truncated: int = 0  # samples that stopped at max_new_tokens
    response_tokens: int = 0  # summed over the samples
    grading_timeouts: int = 0
    responses: list[str] | None = None
    preds: list[str | None] | None = None

    @property
    def accuracy(self) -> float:
        return self.n_correct / self.n


@dataclass
class EvalResult:
    """``metrics`` for the sinks, ``rows`` (one per problem, in dataset order) for a JSONL dump."""

    metrics: dict[str, float]
    rows: list[ProblemResult]
    settings: EvalSettings
    step: int = 0
    seconds: float = 0.0
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> label, problems, samples

    def summary(self, **extra: Any) -> dict[str, Any]:
        """JSON-able summary (no per-problem rows); ``extra`` is merged in (model, servers, files ...)."""
        return {"step": self.step, "seconds": round(self.seconds, 3), "settings": asdict(self.settings),
                "datasets": self.datasets, "metrics": self.metrics, **extra}

    def write(self, json_path: str | os.PathLike, jsonl_path: str | os.PathLike | None = None,
              **extra: Any) -> tuple[Path, Path]:
        """Write the summary JSON and the per-problem JSONL (default: ``<json stem>.problems.jsonl``
        beside it). Each file is written to a temporary name and renamed, so a reader never sees half."""
        json_path = Path(json_path)
        jsonl_path = Path(jsonl_path) if jsonl_path is not None else json_path.with_suffix(".problems.jsonl")
        _atomic_write(json_path, json.dumps(self.summary(**extra), indent=2) + "\n")
        rows = (json.dumps({k: v for k, v in asdict(r).items() if v is not None}) for r in self.rows)
        _atomic_write(jsonl_path, "".join(line + "\n" for line in rows))
        return json_path, jsonl_path


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ planning
@dataclass(frozen=True)
class _Problem:
    key: str
    dataset: str
    prompt_ids: tuple[int, ...]
    ground_truth: str
    n: int


def dataset_name(data_source: str) -> str:
    """A data_source as one metric-key segment (no '/', no spaces)."""
    return re.sub(r"[\s/]+", "_", str(data_source)).strip("_") or "dataset"


def plan_problems(dataset: Any, settings: EvalSettings, name: str | None = None) -> list[_Problem]:
    """The unique problems to evaluate, in dataset order, with their k (module docstring)."""
    replica_counts = getattr(dataset, "replica_counts", {}) or {}
    seen: set[str] = set()
    per_dataset: dict[str, int] = {}
    problems = []
    for rec in dataset.records:
        if rec.key in seen:  # a kept replica row (dedup_replicas=False): same problem
            continue
        seen.add(rec.key)
        group = dataset_name(name if name is not None else rec.data_source)
        if settings.max_problems is not None and per_dataset.get(group, 0) >= settings.max_problems:
            continue
        per_dataset[group] = per_dataset.get(group, 0) + 1
        n = settings.samples_for(replica_counts.get(rec.key, 1))
        problems.append(_Problem(rec.key, group, tuple(rec.prompt_ids), str(rec.ground_truth), n))
    return problems


def _chunks(problems: list[_Problem], chunk_samples: int) -> list[list[_Problem]]:
    """Consecutive problems, about ``chunk_samples`` samples per chunk (at least one problem)."""
    out, cur, size = [], [], 0
    for p in problems:
        if cur and size + p.n > chunk_samples:
            out.append(cur)
            cur, size = [], 0
        cur.append(p)
        size += p.n
    if cur:
        out.append(cur)
    return out


# ------------------------------------------------------------------------------------------ running
def evaluate(client: Any, dataset: Any, pool: Any, settings: EvalSettings, *, tokenizer: Any = None,
             step: int = 0, progress: bool = False, **options: Any) -> EvalResult:
    """Run :func:`evaluate_async` to completion (for callers without a running event loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(evaluate_async(client, dataset, pool, settings, tokenizer=tokenizer, step=step,
                                          progress=progress, **options))
    raise RuntimeError("evaluate() called inside a running event loop; use `await evaluate_async(...)`")


async def evaluate_async(client: Any, dataset: Any, pool: Any, settings: EvalSettings, *, tokenizer: Any = None,
                         step: int = 0, progress: bool = False, name: str | None = None,
                         keep_responses: bool = False, chunk_samples: int | None = None,
                         stream: TextIO | None = None) -> EvalResult:
    """Generate, grade and summarise (module docstring).

    client    -- a RolloutClient (anything with its async ``generate``); the trainer's own is fine.
    dataset   -- a PromptDataset (``records``, ``replica_counts``); ``prompt_ids`` are sent, not text.
    pool      -- a RewardPool (anything with ``grade_batch([(text, ground_truth)])``).
    tokenizer -- decodes the output ids (skip_special_tokens); None: the server's ``text``.
    name      -- report the whole dataset under ``eval/<name>/`` instead of per data_source.
    keep_responses -- keep every response text and extracted answer in the rows.
    chunk_samples  -- samples per chunk; default 4x the client's max_concurrency.
    """
    t0 = time.monotonic()
    problems = plan_problems(dataset, settings, name)
    if not problems:
        raise ValueError("nothing to evaluate: the dataset has no records")
    if chunk_samples is None:
        opts = getattr(client, "options", None)
        chunk_samples = 4 * opts.max_concurrency if opts is not None else DEFAULT_CHUNK_SAMPLES
    sampling = settings.sampling_params()
    shown = _Progress(problems, settings, stream or sys.stderr, t0) if progress else None
    rows: list[ProblemResult] = []
    grading: asyncio.Task | None = None  # the previous chunk, graded in a thread while this one generates
    try:
        for chunk in _chunks(problems, max(1, chunk_samples)):
            samples = await _generate(client, chunk, sampling, step, settings.seed)
            if grading is not None:
                rows += await grading
                if shown:
                    shown.update(rows)
            grading = asyncio.create_task(asyncio.to_thread(_grade, chunk, samples, pool, tokenizer, keep_responses))
        rows += await grading
        grading = None
    finally:
        if grading is not None:  # generation failed: let the grading thread finish before leaving
            await asyncio.gather(grading, return_exceptions=True)
    if shown:
        shown.update(rows)
    metrics, datasets = summarize(rows, settings)
    return EvalResult(metrics, rows, settings, step, time.monotonic() - t0, datasets)


async def _generate(client: Any, chunk: list[_Problem], sampling: SamplingParams, step: int,
                    seed: int) -> list[list[GenerateResponse]]:
    """All samples of the chunk; one generate() per distinct k (usually one), results in chunk order."""
    from dcpo_mcore.rollout.client import PromptInput  # client.py needs aiohttp: import on use

    out: list[list[GenerateResponse] | None] = [None] * len(chunk)
    for n in dict.fromkeys(p.n for p in chunk):
        idx = [i for i, p in enumerate(chunk) if p.n == n]
        prompts = [PromptInput(key=f"{chunk[i].key}#eval{seed}", input_ids=list(chunk[i].prompt_ids)) for i in idx]
        groups = await client.generate(prompts, sampling, n=n, step=step, return_logprob=False)
        for i, group in zip(idx, groups):
            out[i] = list(group)
    return out  # type: ignore[return-value]


def _decode(sample: GenerateResponse, tokenizer: Any) -> str:
    if tokenizer is not None:
        return tokenizer.decode(sample.output_ids, skip_special_tokens=True)
    if sample.text is None:
        raise ValueError("the server returned no response text; pass tokenizer= to decode the output ids")
    return sample.text


def _grade(chunk: list[_Problem], samples: list[list[GenerateResponse]], pool: Any, tokenizer: Any,
           keep: bool) -> list[ProblemResult]:
    """Decode and grade one chunk (runs in a worker thread; the pool serialises its own batches)."""
    texts = [[_decode(s, tokenizer) for s in group] for group in samples]
    grades = iter(pool.grade_batch([(t, p.ground_truth) for p, group in zip(chunk, texts) for t in group]))
    rows = []
    for p, group, group_texts in zip(chunk, samples, texts):
        g = [next(grades) for _ in group]
        rows.append(ProblemResult(
            key=p.key, dataset=p.dataset, ground_truth=p.ground_truth, n=len(group),
            n_correct=sum(r.correct for r in g), format_errors=sum(not r.has_box for r in g),
            truncated=sum(s.finished_by == "length" for s in group),
            response_tokens=sum(len(s.output_ids) for s in group), grading_timeouts=sum(r.timed_out for r in g),
            responses=list(group_texts) if keep else None, preds=[r.pred for r in g] if keep else None))
    return rows


# ------------------------------------------------------------------------------------------ metrics
def metric_label(greedy: bool, ks: Sequence[int]) -> str:
    """The accuracy's key segment: avg@1 (greedy), avg@<k>, avg@1_sampled, or avg@k for mixed k."""
    if greedy:
        return "avg@1"
    distinct = set(ks)
    if len(distinct) != 1:
        return "avg@k"
    k = distinct.pop()
    return f"avg@{k}" if k > 1 else "avg@1_sampled"


def summarize(rows: Sequence[ProblemResult], settings: EvalSettings
              ) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Per-dataset metrics ``eval/<dataset>/...`` and a small description of each dataset."""
    by_dataset: dict[str, list[ProblemResult]] = {}
    for r in rows:
        by_dataset.setdefault(r.dataset, []).append(r)
    metrics: dict[str, float] = {}
    datasets: dict[str, dict[str, Any]] = {}
    for name, group in by_dataset.items():
        samples = sum(r.n for r in group)
        label = metric_label(settings.greedy, [r.n for r in group])
        prefix = f"eval/{name}/"
        metrics[prefix + label] = sum(r.accuracy for r in group) / len(group)
        metrics[prefix + "format_error_ratio"] = sum(r.format_errors for r in group) / samples
        metrics[prefix + "truncated_ratio"] = sum(r.truncated for r in group) / samples
        metrics[prefix + "response_length_mean"] = sum(r.response_tokens for r in group) / samples
        metrics[prefix + "grading_timeout_ratio"] = sum(r.grading_timeouts for r in group) / samples
        metrics[prefix + "problems"] = float(len(group))
        metrics[prefix + "samples_per_problem"] = samples / len(group)
        datasets[name] = {"metric": prefix + label, "value": metrics[prefix + label], "problems": len(group),
                          "samples": samples}
    return metrics, datasets


class _Progress:
    """One stderr line per finished chunk: problems, samples, time, ETA, running accuracy."""

    def __init__(self, problems: list[_Problem], settings: EvalSettings, stream: TextIO, t0: float):
        self.total_problems, self.total_samples = len(problems), sum(p.n for p in problems)
        self.mode = "greedy" if settings.greedy else "sampled"
        self.stream, self.t0 = stream, t0

    def update(self, rows: list[ProblemResult]) -> None:
        done = sum(r.n for r in rows)
        elapsed = time.monotonic() - self.t0
        eta = elapsed / done * (self.total_samples - done) if done else math.nan
        acc = sum(r.n_correct for r in rows) / done if done else 0.0
        print(f"[eval] {len(rows)}/{self.total_problems} problems, {done}/{self.total_samples} {self.mode} samples "
              f"| {format_duration(elapsed)} | ETA {format_duration(eta)} | accuracy so far {acc:.3f}",
              file=self.stream, flush=True)
