"""Micro-batch construction (dcpo_mcore.engine.batching) and the LR schedule, in one process, no megatron."""
import math

import pytest
import torch

from dcpo_mcore.engine.batching import (
    BatchSettings,
    PolicySample,
    build_microbatch,
    microbatch_count,
    microbatch_shape,
    plan_microbatches,
    split_across_dp,
)
from dcpo_mcore.engine.optimizer import LRSchedule, OptimSettings


def _sample(p, r, adv=0.0, base=0, old=True):
    prompt = list(range(base, base + p))
    resp = list(range(base + 100, base + 100 + r))
    return PolicySample(prompt, resp, adv, torch.arange(r, dtype=torch.float32) * -0.1 if old else None)


def _reference_rows(samples):
    """For each sample, (target token ids, index of their logit row within the sample)."""
    out = []
    for s in samples:
        seq = list(s.prompt_ids) + list(s.response_ids)
        p = len(s.prompt_ids)
        out.append([(seq[p + j], p + j - 1) for j in range(len(s.response_ids))])
    return out


@pytest.mark.parametrize("packed", [False, True])
def test_targets_positions_and_slots_point_at_response_tokens(packed):
    samples = [_sample(3, 4, base=0), _sample(1, 2, base=10), _sample(5, 1, base=20)]
    mb = build_microbatch(samples, [7, 8, 9], BatchSettings(packed=packed))
    b, s = mb.shape
    flat_tokens = mb.tokens.reshape(-1)
    assert mb.num_tokens == 4 + 2 + 1
    # Every selected row's target is the next token of the same sample, and it is a response token.
    assert torch.equal(mb.targets[mb.positions], flat_tokens[mb.positions + 1])
    r_max = mb.resp_mask.shape[1]
    for k, ref in enumerate(_reference_rows(samples)):
        sel = (mb.slots // r_max) == k
        got_targets = mb.targets[mb.positions[sel]].tolist()
        assert got_targets == [t for t, _ in ref]
        assert (mb.slots[sel] % r_max).tolist() == list(range(len(ref)))
    assert mb.seq_index.tolist() == [7, 8, 9]
    assert mb.resp_mask.sum(1).tolist() == [4, 2, 1]
    assert mb.old_logprobs[0, :4].tolist() == pytest.approx([0.0, -0.1, -0.2, -0.3])
    assert mb.old_logprobs[1, 2:].abs().sum() == 0  # padding of the per-sample matrix


def test_padded_layout_is_one_right_padded_row_per_sample():
    samples = [_sample(3, 4), _sample(1, 2)]
    mb = build_microbatch(samples, [0, 1], BatchSettings(pad_to_multiple=4))
    assert mb.shape == (2, 8)  # longest is 7, rounded up to 4
    assert mb.attention_mask is None and mb.cu_seqlens is None
    assert mb.tokens[1, 3:].tolist() == [0] * 5
    assert mb.position_ids[0, :7].tolist() == list(range(7))


def test_packed_layout_restarts_positions_and_blocks_attention():
    samples = [_sample(2, 2, base=0), _sample(1, 2, base=10), _sample(2, 1, base=20)]
    mb = build_microbatch(samples, [0, 1, 2], BatchSettings(packed=True, pad_to_multiple=12))
    assert mb.shape == (1, 12)
    # packed longest first: sample 0 (4 tokens), then 1 (3), then 2 (3), then 2 tokens of padding
    assert mb.position_ids[0].tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 0, 1]  # last 2 = padding block
    assert mb.cu_seqlens.tolist() == [0, 4, 7, 10, 12]
    mask = mb.attention_mask[0, 0]  # True = masked
    allowed = ~mask
    starts = [0, 4, 7, 10]
    ends = [4, 7, 10, 12]
    for q in range(12):
        blk = next(i for i in range(4) if starts[i] <= q < ends[i])
        expect = [starts[blk] <= k <= q for k in range(12)]
        assert allowed[q].tolist() == expect, q
    assert not mask.all(-1).any()  # no fully masked query row (softmax would be NaN)


def test_packed_rows_respect_pack_length():
    samples = [_sample(3, 3), _sample(2, 2), _sample(2, 2), _sample(1, 1)]
    mb = build_microbatch(samples, range(4), BatchSettings(packed=True, pack_length=8))
    assert mb.shape[1] == 8
    # first-fit decreasing: [6 + 2], [4 + 4]
    assert mb.shape[0] == 2
    assert mb.num_tokens == 3 + 2 + 2 + 1


def test_forced_shape_pads_rows_and_length_without_moving_tokens():
    samples = [_sample(3, 4), _sample(1, 2)]
    settings = BatchSettings(packed=True)
    own = build_microbatch(samples, [0, 1], settings)
    big = build_microbatch(samples, [0, 1], settings, shape=(2, 16))
    assert microbatch_shape(samples, settings) == own.shape == (1, 10)
    assert big.shape == (2, 16)
    s = own.shape[1]
    rows = big.positions // 16 * s + big.positions % 16
    assert torch.equal(rows, own.positions) and torch.equal(big.slots, own.slots)
    assert torch.equal(big.targets[big.positions], own.targets[own.positions])
    assert not big.attention_mask[1, 0].all(-1).any()  # the empty row is one padding block
    with pytest.raises(ValueError, match="smaller"):
        build_microbatch(samples, [0, 1], settings, shape=(1, 4))


def test_split_across_dp_is_deterministic_balanced_and_complete():
    lengths = [5, 17, 3, 9, 9, 12, 4, 30, 2, 8]
    shares = split_across_dp(lengths, 3)
    assert shares == split_across_dp(list(lengths), 3)
    assert sorted(i for s in shares for i in s) == list(range(10))
    assert max(len(s) for s in shares) <= math.ceil(10 / 3)
    loads = [sum(lengths[i] for i in s) for s in shares]
    assert max(loads) - min(loads) <= max(lengths)
    assert all(s == sorted(s) for s in shares)
    with pytest.raises(ValueError, match="at least one sample per DP rank"):
        split_across_dp([1, 2], 3)


def test_microbatch_count_is_shared_and_plan_fills_every_microbatch():
    shares = [[0, 1, 2, 3, 4], [5, 6, 7, 8]]
    assert microbatch_count(shares, BatchSettings(micro_batch_size=2)) == 3  # the larger share decides
    assert microbatch_count(shares, BatchSettings(num_microbatches=4)) == 4
    with pytest.raises(ValueError, match="fewer micro-batches"):
        microbatch_count(shares, BatchSettings(num_microbatches=5))
    lengths = [7, 3, 9, 1, 4, 6, 2, 8, 5]
    plan = plan_microbatches(shares[1], lengths, 3)
    assert len(plan) == 3 and all(plan)
    assert sorted(i for mb in plan for i in mb) == shares[1]


def test_bad_inputs_are_reported():
    with pytest.raises(ValueError, match="non-empty"):
        build_microbatch([PolicySample([1], [])], [0], BatchSettings())
    with pytest.raises(ValueError, match="entries"):
        build_microbatch([PolicySample([1], [2, 3], 0.0, torch.zeros(3))], [0], BatchSettings())
    with pytest.raises(ValueError, match="not for all"):
        build_microbatch([_sample(1, 1), _sample(1, 1, old=False)], [0, 1], BatchSettings())
    with pytest.raises(ValueError):
        BatchSettings(micro_batch_size=0)


def test_lr_schedules():
    const = LRSchedule(1.0, kind="constant", warmup=4)
    assert [const.at(i) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    lin = LRSchedule(1.0, 0.0, "linear", 0, 5)
    assert [lin.at(i) for i in range(6)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0])
    cos = LRSchedule(2.0, 0.5, "cosine", 1, 6)
    assert cos.at(0) == 2.0 and cos.at(1) == 2.0 and cos.at(5) == pytest.approx(0.5) and cos.at(9) == pytest.approx(0.5)
    assert cos.at(3) == pytest.approx(0.5 + 1.5 * 0.5)  # half way
    with pytest.raises(ValueError, match="total_steps"):
        LRSchedule(1.0, kind="cosine", warmup=3, total=3)


def test_optim_settings_from_config_section():
    from dcpo_mcore.config.sections import OptimConfig

    s = OptimSettings.from_config(OptimConfig(lr=2e-6, lr_schedule="cosine", lr_warmup_steps=2), total_steps=10)
    assert (s.lr, s.lr_schedule, s.lr_warmup_steps, s.total_steps, s.clip_grad) == (2e-6, "cosine", 2, 10, 1.0)
    assert s.schedule().at(0) == pytest.approx(1e-6)
