"""RolloutStage's client-side logic with a scripted client and grader (fast; the real path, against SGLang,
is tests/integration/test_trainer.py and the demo): DAPO over-generation and its accounting, the
max_gen_batches error, and regeneration of groups sampled with stale weights."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from dcpo_mcore.rollout import SamplingParams
from dcpo_mcore.rollout.wire import GenerateResponse
from dcpo_mcore.trainer.rollout_stage import RolloutSettings, RolloutStage, RolloutStepError


@dataclass
class Rec:
    key: str
    prompt_ids: tuple
    ground_truth: str


@dataclass
class Grade:
    reward: float
    correct: bool
    has_box: bool


class ScriptedClient:
    """Answers prompt ``p<i>`` with text "right" for the samples listed in ``right[i]``, else "wrong";
    ``versions`` says which weight version each call reports."""

    def __init__(self, right: dict[str, set[int]], versions: list[str]):
        self.right, self.versions, self.calls = right, versions, []

    def generate_sync(self, prompts, sampling, *, n, step):
        version = self.versions[min(len(self.calls), len(self.versions) - 1)]
        self.calls.append(([p.key for p in prompts], step))
        return [[GenerateResponse(output_ids=[5, 6], output_logprobs=[-0.1, -0.2], weight_version=version,
                                  text="right" if j in self.right.get(p.key, set()) else "wrong") for j in range(n)]
                for p in prompts]


class Pool:
    def grade_batch(self, items):
        return [Grade(1.0 if text == "right" else 0.0, text == "right", True) for text, _ in items]


class FakeSync:
    def __init__(self, version: str):
        self.version, self.pushes = version, 0

    def push(self, version):
        self.pushes += 1


def _stage(client, *, dynamic: bool, prompts_per_step=2, max_gen_batches=3, version="7"):
    records = [Rec(f"p{i}", (1, 2, i), "x") for i in range(20)]
    order = iter(range(0, 20, prompts_per_step))

    def next_prompts():
        start = next(order)
        return records[start:start + prompts_per_step]

    settings = RolloutSettings(prompts_per_step=prompts_per_step, group_size=4, sampling=SamplingParams(),
                               max_new_tokens=8, dynamic_sampling=dynamic, max_gen_batches=max_gen_batches)
    sync = FakeSync(version)
    return RolloutStage(settings, sync, client=client, pool=Pool(), tokenizer=None, next_prompts=next_prompts,
                        cursor_state=lambda: {"pos": 1}), sync


def test_plain_rollout_keeps_every_group_in_order():
    client = ScriptedClient({"p0": {0}}, ["7"])
    stage, _ = _stage(client, dynamic=False)
    batch = stage.collect(step=3)
    assert batch.keys == ["p0"] * 4 + ["p1"] * 4 and batch.rewards == [1.0, 0, 0, 0] + [0.0] * 4
    assert batch.generated_responses == 8 and batch.generation_rounds == 1 and client.calls == [(["p0", "p1"], 3)]
    assert batch.sampler_logprobs[0] == [-0.1, -0.2] and batch.cursor_state == {"pos": 1}
    assert batch.group_records == [] and batch.group_versions == []  # rank-0 bookkeeping is not broadcast


def test_dapo_over_generates_until_enough_mixed_groups_and_counts_everything():
    # mixed groups: p1 (round 1), p4 (round 3) and p5 (round 3); p0, p2, p3 are all-wrong / all-right
    right = {"p1": {0, 1}, "p3": {0, 1, 2, 3}, "p4": {2}, "p5": {3}}
    client = ScriptedClient(right, ["7"])
    stage, _ = _stage(client, dynamic=True)
    batch = stage.collect(step=5)
    assert batch.keys[::4] == ["p1", "p4"]  # exactly prompts_per_step groups, first come first kept
    assert batch.generation_rounds == 3 and batch.generated_responses == 3 * 2 * 4
    # every round draws its own sampling seeds: round 0 uses the step, later rounds their own step ids
    assert [s for _, s in client.calls][0] == 5 and len({s for _, s in client.calls}) == 3


def test_dapo_gives_up_with_a_clear_error_after_max_gen_batches():
    stage, _ = _stage(ScriptedClient({}, ["7"]), dynamic=True, max_gen_batches=2)
    with pytest.raises(RolloutStepError, match="max_gen_batches=2"):
        stage.collect(step=1)


def test_groups_from_stale_weights_are_pushed_again_and_regenerated():
    # step 8 trains the policy of version 7: the first call answers with version "6" (one step old,
    # too old on-policy), the regeneration with "7"
    client = ScriptedClient({"p0": {1}}, ["6", "7"])
    stage, sync = _stage(client, dynamic=False)
    batch = stage.collect(step=8)
    assert sync.pushes == 1 and batch.dropped_stale == 2
    assert client.calls == [(["p0", "p1"], 8), (["p0", "p1"], 8)]
    assert batch.keys == ["p0"] * 4 + ["p1"] * 4 and batch.generated_responses == 16
    assert batch.staleness_mean == 0.0 and batch.staleness_max == 0


@pytest.mark.parametrize("label", ["default", "8", "-1", "7.0", None])
def test_a_version_that_is_unknown_or_newer_than_the_last_push_is_stale(label):
    stage, sync = _stage(ScriptedClient({}, [label, "7"]), dynamic=False)
    batch = stage.collect(step=8)
    assert sync.pushes == 1 and batch.dropped_stale == 2


class Ahead:
    """The rollout stage's view of a producer generating ahead with bound ``max_staleness``."""

    def __init__(self, stage, k):
        self.max_staleness, self.stage, self.quiet_calls = k, stage, 0

    def take(self, step):
        return self.stage._generate_all(step)

    def quiet(self):
        import contextlib

        self.quiet_calls += 1
        return contextlib.nullcontext()


@pytest.mark.parametrize("k,versions,dropped,age", [
    (2, ["5", "7"], 0, 2.0),   # two versions old, bound 2: trained on
    (1, ["5", "7"], 2, 0.0),   # bound 1: dropped, regenerated with the current weights
    (2, ["4", "7"], 2, 0.0),   # three versions old
])
def test_the_staleness_bound_keeps_or_drops_groups(k, versions, dropped, age):
    stage, sync = _stage(ScriptedClient({}, versions), dynamic=False)
    stage.producer = ahead = Ahead(stage, k)
    batch = stage.collect(step=8)
    assert batch.dropped_stale == dropped and sync.pushes == (1 if dropped else 0)
    assert ahead.quiet_calls == sync.pushes  # every repair ran with nothing generated ahead
    assert batch.staleness_mean == age and batch.staleness_max == int(age)


def test_a_sample_spanning_two_versions_is_judged_by_its_oldest():
    client = ScriptedClient({}, ["7"])
    stage, _ = _stage(client, dynamic=False)
    stage.producer = Ahead(stage, 1)
    orig = client.generate_sync

    def spanning(*args, **kwargs):
        out = orig(*args, **kwargs)
        out[0][0] = GenerateResponse.model_validate({**out[0][0].model_dump(), "weight_versions": [
            {"version": "6", "start": 0, "end": 1}, {"version": "7", "start": 1, "end": 2}]})
        return out

    client.generate_sync = spanning
    batch = stage.collect(step=8)
    assert batch.dropped_stale == 0 and batch.staleness_max == 1 and batch.staleness_mean == 0.5


def test_servers_that_stay_stale_stop_the_step():
    stage, sync = _stage(ScriptedClient({}, ["6"]), dynamic=False)
    with pytest.raises(RolloutStepError, match="stale weights"):
        stage.collect(step=8)
    assert sync.pushes == 3
