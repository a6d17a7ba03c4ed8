"""Smooth Advantage Standardisation: worked examples across visits (docs/algorithm.md [sas-first-visit]) and a
loop reference."""
import math
import random

import pytest
import torch

from dcpo_mcore.algo import PromptStats, PromptStatsStore, grpo_advantages, sas_advantages
from dcpo_mcore.algo.sas import smooth_group_advantages

T = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


def test_first_visit_is_grpo_without_epsilon():
    store = PromptStatsStore()
    adv = sas_advantages(T(1, 0, -1, 1), ["p"] * 4, store)
    mean = 0.25
    std = math.sqrt((0.75**2 + 0.25**2 + 1.25**2 + 0.75**2) / 3)  # Bessel-corrected
    assert adv.tolist() == pytest.approx([(r - mean) / std for r in (1, 0, -1, 1)], abs=1e-12)
    assert store.get("p") == PromptStats(1, mean, pytest.approx(std, abs=1e-15))


def test_second_visit_worked_example():
    store = PromptStatsStore()
    sas_advantages(T(1, 1, -1, -1), ["p"] * 4, store)  # mean 0, std sqrt(4/3)
    adv = sas_advantages(T(1, 1, 1, -1), ["p"] * 4, store)
    # Hand computation: mu_new = 0.5, sigma_new = 1 (unbiased), mu_tot = 0.25,
    # sigma_tot^2 = (1*(4/3) + 1 + (1/2)*(0.5 - 0)^2) / 2 = 1.2291666...
    sigma_tot = math.sqrt((4 / 3 + 1 + 0.5 * 0.25) / 2)
    a_new = {1: 0.5, -1: -1.5}
    a_tot = {1: 0.75 / sigma_tot, -1: -1.25 / sigma_tot}
    expected = [(a_new[r] + a_tot[r]) / 2 for r in (1, 1, 1, -1)]  # i = 2: SA_new == SA_tot
    assert adv.tolist() == pytest.approx(expected, abs=1e-12)
    s = store.get("p")
    assert (s.visits, s.mean) == (2, 0.25) and s.std == pytest.approx(sigma_tot, abs=1e-15)


def test_spec_example_all_wrong_then_all_right():
    store = PromptStatsStore()
    assert sas_advantages(T(-1, -1, -1, -1), ["k"] * 4, store).tolist() == [0, 0, 0, 0]
    # visit 2 all +1: mu_tot = 0, sigma_tot = 1, A_tot = +1, A_hat = A_tot / i = +0.5
    assert sas_advantages(T(1, 1, 1, 1), ["k"] * 4, store).tolist() == pytest.approx([0.5] * 4)


def test_all_equal_current_group_after_mixed_history():
    store = PromptStatsStore()
    sas_advantages(T(1, 1, -1, -1), ["p"] * 4, store)
    adv = sas_advantages(T(1, 1, 1, 1), ["p"] * 4, store)
    # mu_tot = 0.5, sigma_tot^2 = (4/3 + 0 + 0.5*1) / 2; A_new = 0 so A_hat = A_tot / 2.
    sigma_tot = math.sqrt((4 / 3 + 0.5) / 2)
    assert adv.tolist() == pytest.approx([0.5 / sigma_tot / 2] * 4, abs=1e-12)
    # Third visit, still all +1: i = 3, A_hat = A_tot / 3 with the further-merged statistics.
    mu3 = (2 * 0.5 + 1) / 3
    var3 = (2 * sigma_tot**2 + 0 + (2 / 3) * (1 - 0.5) ** 2) / 3
    adv3 = sas_advantages(T(1, 1, 1, 1), ["p"] * 4, store)
    assert adv3.tolist() == pytest.approx([(1 - mu3) / math.sqrt(var3) / 3] * 4, abs=1e-12)


def test_always_identical_prompt_stays_zero():
    store = PromptStatsStore()
    for _ in range(4):
        assert sas_advantages(T(1, 1, 1), ["same"] * 3, store).abs().sum() == 0
    assert store.get("same") == PromptStats(4, 1.0, 0.0)


def test_opposite_signs_pick_smaller_magnitude():
    # docs/algorithm.md [sas-first-visit]: A_new = 1, A_tot = -3, i = 3 -> SA_new = -1/3, SA_tot = -5/3, A_hat = -1/3.
    adv = smooth_group_advantages(T(1.0), 0.0, 1.0, PromptStats(3, 4.0, 1.0))
    assert adv.item() == pytest.approx(-1 / 3)


def test_tiny_std_is_treated_as_zero():
    store = PromptStatsStore()
    adv = sas_advantages(T(0.5, 0.5, 0.5, 0.5 + 1e-12), ["p"] * 4, store)
    assert adv.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_population_std_option():
    store = PromptStatsStore()
    adv = sas_advantages(T(1, 0, -1, 1), ["p"] * 4, store, std="population")
    std = math.sqrt((0.75**2 + 0.25**2 + 1.25**2 + 0.75**2) / 4)
    assert adv.tolist() == pytest.approx([(r - 0.25) / std for r in (1, 0, -1, 1)], abs=1e-12)
    with pytest.raises(ValueError, match="population"):
        sas_advantages(T(1, 0), ["p"] * 2, PromptStatsStore(), std="sample")


def test_duplicate_key_in_one_batch_merges_sequentially():
    a, b = T(1, -1, -1, -1), T(1, 1, 1, -1)
    store = PromptStatsStore()
    together = sas_advantages(torch.cat([a, T(0, 0), b]), ["x"] * 4 + ["y"] * 2 + ["x"] * 4, store)
    ref = PromptStatsStore()
    first, second = sas_advantages(a, ["x"] * 4, ref), sas_advantages(b, ["x"] * 4, ref)
    assert store.get("x").visits == 2 and store.get("x") == ref.get("x")
    assert torch.equal(together[:4], first) and torch.equal(together[6:], second)
    # Back-to-back groups of one key are split by group_size.
    store2 = PromptStatsStore()
    adjacent = sas_advantages(torch.cat([a, b]), ["x"] * 8, store2, group_size=4)
    assert store2.get("x").visits == 2 and torch.equal(adjacent, torch.cat([first, second]))


def _reference_sas(history, std_mode="unbiased"):
    """Plain-Python SAS over a list of groups for one prompt, straight from docs/algorithm.md [sas-update]."""
    n, mu, sigma, outs = 0, 0.0, 0.0, []
    for rewards in history:
        g = len(rewards)
        m = sum(rewards) / g
        d = g - 1 if std_mode == "unbiased" else g
        s = math.sqrt(sum((r - m) ** 2 for r in rewards) / d)
        i = n + 1
        if n == 0:
            mt, st = m, s
        else:
            mt = (n * mu + m) / (n + 1)
            st = math.sqrt((n * sigma**2 + s**2 + n / (n + 1) * (m - mu) ** 2) / (n + 1))
        out = []
        for r in rewards:
            an = (r - m) / s if s > 1e-8 else 0.0
            at = (r - mt) / st if st > 1e-8 else 0.0
            sn = (i - 1) / i * an + at / i
            stt = an / i + (i - 1) / i * at
            out.append(sn if abs(sn) < abs(stt) else stt)
        outs.append(out)
        n, mu, sigma = i, mt, st
    return outs


@pytest.mark.parametrize("std_mode", ["unbiased", "population"])
def test_matches_reference_on_random_histories(std_mode):
    rng = random.Random(0)
    store = PromptStatsStore()
    keys = [f"q{j}" for j in range(6)]
    history = {k: [] for k in keys}
    got = {k: [] for k in keys}
    for _step in range(7):
        batch_keys = rng.sample(keys, 4)
        rewards, row_keys = [], []
        for k in batch_keys:
            group = [float(rng.choice([-1, 0, 1])) for _ in range(5)]
            history[k].append(group)
            rewards += group
            row_keys += [k] * 5
        adv = sas_advantages(T(*rewards), row_keys, store, std=std_mode)
        for j, k in enumerate(batch_keys):
            got[k].append(adv[5 * j: 5 * j + 5].tolist())
    for k in keys:
        for ours, ref in zip(got[k], _reference_sas(history[k], std_mode)):
            assert ours == pytest.approx(ref, abs=1e-12)


def test_state_dict_round_trip_is_bit_exact():
    store = PromptStatsStore()
    sas_advantages(T(0.3, -1.7, 2.9, 0.1), ["a"] * 4, store)
    sas_advantages(T(1, 0, 0, 1), ["b"] * 4, store)
    sas_advantages(T(0.7, 0.2, -0.4, 0.1), ["a"] * 4, store)
    restored = PromptStatsStore()
    restored.load_state_dict(store.state_dict())
    assert dict(restored.items()) == dict(store.items())
    # Continuing from the restored store gives bit-identical advantages.
    nxt = T(1, -1, 0.5, 0)
    assert torch.equal(sas_advantages(nxt, ["a"] * 4, store), sas_advantages(nxt, ["a"] * 4, restored))


def test_load_state_dict_rejects_corrupt_state():
    state = PromptStatsStore().state_dict()
    with pytest.raises(ValueError, match="version"):
        PromptStatsStore().load_state_dict({**state, "version": 99})
    with pytest.raises(ValueError, match="lengths"):
        PromptStatsStore().load_state_dict({**state, "keys": ["a"]})
    with pytest.raises(ValueError, match="duplicate"):
        PromptStatsStore().load_state_dict({"version": 1, "keys": ["a", "a"], "visits": [1, 1], "mean": [0, 0], "std": [0, 0]})


def test_grpo_advantages_use_epsilon_and_singletons():
    adv = grpo_advantages(T(1, -1, 2), ["a", "a", "b"])
    std = math.sqrt(2)  # unbiased std of [1, -1]
    assert adv.tolist() == pytest.approx([1 / (std + 1e-6), -1 / (std + 1e-6), 2 / (1 + 1e-6)], abs=1e-12)
    assert grpo_advantages(T(1, 1), ["a", "a"]).tolist() == [0.0, 0.0]


def test_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="len\\(prompt_keys\\)"):
        sas_advantages(T(1, 0), ["a"], PromptStatsStore())
