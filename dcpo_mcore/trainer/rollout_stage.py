"""Steps 1-3 of the loop: prompts -> SGLang samples -> verifier rewards, as one grouped batch.

Collective: every trainer rank calls :meth:`RolloutStage.collect`; rank 0 generates and grades, and
the batch (token ids, sampler log-probs, rewards) is broadcast so every rank runs the same
advantage math on the same numbers.

Two things can make a rollout unusable, and both are repaired here rather than trained on:

* **Stale weights.** A server that died and was restarted (by us, or by whoever owns it) serves its
  start-up weights. Every sample carries the ``weight_version`` it was generated with (every version,
  when a push paused it mid-way); groups with a version that is unknown, newer than the last push, or
  more than ``rollout.max_staleness`` older than the step's policy (docs/algorithm.md [async-rollout])
  are dropped, the weights are pushed again (a collective), and those groups are generated again, with
  no generation ahead running meanwhile. On-policy (K = 0) that means exactly the last pushed version.
* **DAPO dynamic sampling** (docs/algorithm.md [dapo-dynamic-sampling]): groups whose rewards all agree carry
  no signal; more prompts are rolled out until ``prompts_per_step`` informative groups are kept, at most
  ``max_gen_batches`` rounds, and every generated response is counted.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from dcpo_mcore.algo import dynamic_sampling_keep, overlong_penalty
from dcpo_mcore.rollout import PromptInput, SamplingParams

from dcpo_mcore.engine import collectives as comm
from dcpo_mcore.errors import UserError

log = logging.getLogger(__name__)
MAX_STALE_REPAIRS = 3  # re-push + regenerate rounds before a step gives up


class RolloutStepError(UserError, RuntimeError):
    """A training step could not get a usable rollout batch."""


@dataclass
class RolloutBatch:
    """One step's responses; rows ``g*G .. g*G+G-1`` all answer prompt ``g`` (G = group_size)."""

    group_size: int
    keys: list[str] = field(default_factory=list)  # [N] prompt key of each response
    prompt_ids: list[list[int]] = field(default_factory=list)  # [N][P_i]
    response_ids: list[list[int]] = field(default_factory=list)  # [N][R_i], R_i >= 1
    sampler_logprobs: list[list[float]] = field(default_factory=list)  # [N][R_i] SGLang's log-probs
    rewards: list[float] = field(default_factory=list)  # [N] after any overlong shaping
    correct: list[bool] = field(default_factory=list)
    format_error: list[bool] = field(default_factory=list)  # no parsable answer
    truncated: list[bool] = field(default_factory=list)  # stopped by max_new_tokens
    generated_responses: int = 0  # everything SGLang produced for this step, dropped groups included
    generation_rounds: int = 0
    dropped_stale: int = 0  # groups dropped and generated again: their weights were unknown or too old
    staleness_mean: float = 0.0  # versions between the step's policy and each group's oldest generating version
    staleness_max: int = 0
    cursor_state: dict | None = None  # rank 0's prompt cursor after this step (shared with all ranks)
    # per group, rank 0 only (dropped before the broadcast): the prompt record and the weight versions seen
    group_records: list = field(default_factory=list, repr=False)
    group_versions: list[set] = field(default_factory=list, repr=False)

    @property
    def num_groups(self) -> int:
        return len(self.keys) // self.group_size

    def extend(self, other: "RolloutBatch", groups: list[int]) -> None:
        g = self.group_size
        for name in ("keys", "prompt_ids", "response_ids", "sampler_logprobs", "rewards", "correct",
                     "format_error", "truncated"):
            src, dst = getattr(other, name), getattr(self, name)
            for i in groups:
                dst.extend(src[i * g:(i + 1) * g])
        for name in ("group_records", "group_versions"):
            src, dst = getattr(other, name), getattr(self, name)
            dst.extend(src[i] for i in groups)

    def group_rows(self, groups: list[int]) -> "RolloutBatch":
        out = RolloutBatch(self.group_size)
        out.extend(self, groups)
        return out


def version_number(label: Any) -> int | None:
    """A weight-version label as the step number we push it as; None for any other label (a server's
    start-up "default", or weights someone else loaded)."""
    return int(label) if isinstance(label, str) and label.isdigit() else None


def batches_to_bytes(batches: dict[int, RolloutBatch]) -> bytes:
    """Finished batches not yet trained on (rollouts generated ahead), as the checkpoint keeps them: their
    weight versions are gone after a resume, so they cannot be generated again (JSON; NaN allowed)."""
    def plain(batch: RolloutBatch) -> dict:
        out = dataclasses.asdict(batch)
        out["group_versions"] = [sorted(v, key=str) for v in batch.group_versions]
        return out

    return json.dumps({str(step): plain(b) for step, b in sorted(batches.items())}).encode()


def batches_from_bytes(data: bytes) -> dict[int, RolloutBatch]:
    from dcpo_mcore.data.records import PromptRecord

    out = {}
    for step, fields in json.loads(data).items():
        fields["group_records"] = [PromptRecord(**r) for r in fields["group_records"]]
        fields["group_versions"] = [set(v) for v in fields["group_versions"]]
        out[int(step)] = RolloutBatch(**fields)
    return out


@dataclass(frozen=True)
class RolloutSettings:
    prompts_per_step: int
    group_size: int
    sampling: SamplingParams
    max_new_tokens: int
    dynamic_sampling: bool = False  # DAPO
    max_gen_batches: int = 10
    overlong_buffer_len: int = 0
    overlong_penalty: float = 0.0


class RolloutStage:
    """Rank 0 owns ``client``/``pool``/``next_prompts`` (None elsewhere); ``sync`` is every rank's.

    ``producer`` (trainer/producers.py) hands rank 0 each step's batch: on-policy until setup installs
    the one ``rollout.max_staleness`` asks for, after the first push."""

    def __init__(self, settings: RolloutSettings, sync: Any, *, client: Any = None, pool: Any = None,
                 tokenizer: Any = None, next_prompts: Callable[[], list] | None = None,
                 cursor_state: Callable[[], dict] | None = None):
        from .producers import OnPolicyProducer

        self.settings, self.sync = settings, sync
        self.client, self.pool, self.tokenizer = client, pool, tokenizer
        self.next_prompts, self.cursor_state = next_prompts, cursor_state
        self._eos = getattr(tokenizer, "eos_token_id", None)
        self.producer: Any = OnPolicyProducer(self._generate_all if comm.is_rank0() else None)

    def collect(self, step: int) -> RolloutBatch:
        """A full batch of ``prompts_per_step`` groups, each within the staleness bound. Collective."""
        batch = self.producer.take(step) if comm.is_rank0() else None
        for _ in range(MAX_STALE_REPAIRS):
            stale = comm.broadcast_object(self._stale_groups(batch, step) if comm.is_rank0() else None)
            if not stale:
                if batch is not None:
                    batch.staleness_mean, batch.staleness_max = self._staleness(batch, step)
                    batch.group_records, batch.group_versions = [], []
                return comm.broadcast_object(batch)
            if comm.is_rank0():
                log.warning("%d group(s) of step %d were generated with stale weights (a server restarted?); "
                            "pushing the weights again and regenerating them", len(stale), step)
            with self.producer.quiet():  # nothing generated ahead meanwhile (it would see the re-push)
                self.sync.push(self.sync.version)  # collective
                if comm.is_rank0():
                    batch = self._regenerate(batch, stale, step)
        raise RolloutStepError(f"step {step}: servers kept answering with stale weights after {MAX_STALE_REPAIRS} "
                           "re-pushes; check the server logs in the run directory")

    # ------------------------------------------------------------------ rank 0
    def _generate_all(self, step: int) -> RolloutBatch:
        s = self.settings
        kept = RolloutBatch(s.group_size)
        rounds = 0
        while kept.num_groups < s.prompts_per_step:
            if rounds == s.max_gen_batches:
                raise RolloutStepError(
                    f"step {step}: DAPO dynamic sampling kept {kept.num_groups} of {s.prompts_per_step} groups after "
                    f"algo.max_gen_batches={s.max_gen_batches} rounds (all other groups had equal rewards); raise "
                    "max_gen_batches or use an easier/harder prompt mix")
            records = self.next_prompts()
            # Round 0 uses the step as the seed's step; later rounds get their own seed space.
            fresh = self._generate(records, step if rounds == 0 else step + rounds * 1_000_000_007)
            rounds += 1
            kept.generated_responses += len(fresh.keys)
            groups = list(range(fresh.num_groups))
            if s.dynamic_sampling:
                keep = dynamic_sampling_keep(torch.tensor(fresh.rewards), fresh.keys, s.group_size)
                groups = [g for g in groups if bool(keep[g * s.group_size])]
            groups = groups[:s.prompts_per_step - kept.num_groups]
            kept.extend(fresh, groups)
        kept.generation_rounds = rounds
        kept.cursor_state = self.cursor_state() if self.cursor_state else None
        return kept

    def _generate(self, records: list, seed_step: int) -> RolloutBatch:
        """One round: G samples of every record, graded, with the weight versions seen per group."""
        s = self.settings
        prompts = [PromptInput(key=r.key, input_ids=list(r.prompt_ids)) for r in records]
        results = self.client.generate_sync(prompts, s.sampling, n=s.group_size, step=seed_step)
        out = RolloutBatch(s.group_size)
        texts = []
        for record, samples in zip(records, results):
            out.group_records.append(record)
            out.group_versions.append(set().union(*(x.versions_seen for x in samples)))
            for x in samples:
                ids = list(x.output_ids)
                lps = list(x.output_logprobs or [])
                if not ids:  # nothing generated: train on eos so the sample still counts (as wrong)
                    ids, lps = [self._eos if self._eos is not None else 0], [float("nan")]
                out.keys.append(record.key)
                out.prompt_ids.append(list(record.prompt_ids))
                out.response_ids.append(ids)
                out.sampler_logprobs.append(lps if len(lps) == len(ids) else [float("nan")] * len(ids))
                out.truncated.append(x.finished_by == "length")
                texts.append((x.text if x.text is not None else self.tokenizer.decode(ids, skip_special_tokens=True),
                              record.ground_truth))
        graded = self.pool.grade_batch(texts)
        rewards = torch.tensor([g.reward for g in graded], dtype=torch.float32)
        if s.overlong_buffer_len > 0:  # DAPO overlong shaping (docs/algorithm.md [dapo-overlong])
            lengths = torch.tensor([len(r) for r in out.response_ids])
            rewards = rewards + overlong_penalty(lengths, s.max_new_tokens, s.overlong_buffer_len, s.overlong_penalty)
        out.rewards = rewards.tolist()
        out.correct = [bool(g.correct) for g in graded]
        out.format_error = [not g.has_box for g in graded]
        return out

    def _stale_groups(self, batch: RolloutBatch, step: int) -> list[int]:
        newest, oldest = int(self.sync.version), step - 1 - self.producer.max_staleness
        return [g for g, seen in enumerate(batch.group_versions)
                if not all(v is not None and oldest <= v <= newest for v in map(version_number, seen))]

    @staticmethod
    def _staleness(batch: RolloutBatch, step: int) -> tuple[float, int]:
        ages = [step - 1 - min(map(version_number, seen)) for seen in batch.group_versions]
        return (sum(ages) / len(ages), max(ages)) if ages else (0.0, 0)

    def _regenerate(self, batch: RolloutBatch, stale: list[int], step: int) -> RolloutBatch:
        fresh = self._generate([batch.group_records[g] for g in stale], step)
        out = RolloutBatch(batch.group_size)
        by_group = {g: i for i, g in enumerate(stale)}
        for g in range(batch.num_groups):  # keep the original group order
            if g in by_group:
                out.extend(fresh, [by_group[g]])
            else:
                out.extend(batch, [g])
        out.generated_responses = batch.generated_responses + len(fresh.keys)
        out.generation_rounds, out.cursor_state = batch.generation_rounds, batch.cursor_state
        out.dropped_stale = batch.dropped_stale + len(stale)
        return out
