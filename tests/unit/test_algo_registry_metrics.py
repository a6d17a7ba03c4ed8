"""Registries, the paper's metrics (TCR, RUR), and DAPO's filter and overlong shaping."""
import pytest
import torch

from dcpo_mcore.algo import (
    AGGREGATIONS,
    ALGORITHMS,
    ESTIMATORS,
    OBJECTIVES,
    ClipCounts,
    Registry,
    advantage_stats,
    clip_ratios,
    compute_advantages,
    dynamic_sampling_keep,
    nonzero_advantage_ratio,
    overlong_penalty,
    prompt_groups,
    GrpoAdvantageParams,
    SasParams,
    PromptStatsStore,
)


def test_registry_rejects_duplicates_and_lists_valid_names():
    reg = Registry("widget")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)
    with pytest.raises(ValueError, match="unknown widget 'b'; valid names: a"):
        reg.get("b")
    with pytest.raises(ValueError, match="dapo, dcpo, dppo, grpo, grpo_dac, grpo_sas, gspo"):
        ALGORITHMS.get("ppo")


def test_every_algorithm_names_registered_parts():
    assert ALGORITHMS.names() == ["dapo", "dcpo", "dppo", "grpo", "grpo_dac", "grpo_sas", "gspo"]
    for name in ALGORITHMS:
        spec = ALGORITHMS.get(name)
        assert spec.estimator in ESTIMATORS and spec.objective in OBJECTIVES and spec.aggregation in AGGREGATIONS
    assert ALGORITHMS.get("dcpo").aggregation == "otm" and ALGORITHMS.get("dcpo").estimator == "sas"
    assert ALGORITHMS.get("dapo").aggregation == "token_mean" and ALGORITHMS.get("gspo").objective == "gspo"
    # The section 5.4 ablations change exactly one part of GRPO.
    grpo = ALGORITHMS.get("grpo")
    for name, part in (("grpo_sas", "estimator"), ("grpo_dac", "objective"), ("dppo", "objective")):
        spec = ALGORITHMS.get(name)
        differ = [f for f in ("estimator", "objective", "aggregation") if getattr(spec, f) != getattr(grpo, f)]
        assert differ == [part], (name, differ)


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_each_method_settings_build_the_parts_its_composition_names(name):
    """The settings class decides the parameter types and the composition table the parts; a method
    whose two sources disagreed (say SAS in the table but GRPO's parameters) would fail here, not in a run."""
    from dcpo_mcore.algo_setup import build_algorithm
    from dcpo_mcore.config.algo import algo_config

    parts = build_algorithm(algo_config(name=name))
    assert isinstance(parts.estimator_params, ESTIMATORS.get(parts.spec.estimator).params_type)
    assert isinstance(parts.loss.objective_params, OBJECTIVES.get(parts.spec.objective).params_type)
    assert parts.loss.aggregation == parts.spec.aggregation


def test_compute_advantages_dispatch():
    r = torch.tensor([1.0, -1.0, 1.0, 1.0])
    keys = ["a", "a", "b", "b"]
    store = PromptStatsStore()
    sas = compute_advantages("sas", r, keys, SasParams(), store=store)
    assert len(store) == 2 and sas[2:].tolist() == [0.0, 0.0]
    grpo = compute_advantages("grpo", r, keys, GrpoAdvantageParams())
    assert grpo[0].item() == pytest.approx(1 / (2**0.5 + 1e-6))
    with pytest.raises(ValueError, match="PromptStatsStore"):
        compute_advantages("sas", r, keys, SasParams())
    with pytest.raises(TypeError):
        compute_advantages("grpo", r, keys, SasParams())


def test_tcr_is_mean_of_micro_batch_fractions():
    # micro 1: 1 of 4 tokens clipped (low); micro 2: 3 of 6 clipped (2 high, 1 low); an empty micro is skipped.
    c1 = ClipCounts(*[torch.tensor(x, dtype=torch.float64) for x in (1, 1, 0, 0, 4)])
    c2 = ClipCounts(*[torch.tensor(x, dtype=torch.float64) for x in (3, 1, 2, 1, 6)])
    empty = torch.zeros(5, dtype=torch.float64)
    m = clip_ratios(torch.stack([c1.as_tensor(), c2.as_tensor(), empty]))
    assert m["token_clip_ratio"].item() == pytest.approx((0.25 + 0.5) / 2)
    assert m["token_clip_ratio_global"].item() == pytest.approx(4 / 10)
    assert m["low_ratio"].item() == pytest.approx((0.25 + 1 / 6) / 2)
    assert m["high_ratio"].item() == pytest.approx((0 + 2 / 6) / 2)
    assert m["dual_ratio"].item() == pytest.approx((0 + 1 / 6) / 2)


def test_rur_counts_exactly_nonzero_advantages():
    adv = torch.tensor([0.0, 0.1, -0.2, 0.0, 1e-12])
    assert nonzero_advantage_ratio(adv).item() == pytest.approx(3 / 5)
    stats = advantage_stats(adv)
    assert stats["nonzero_ratio"].item() == pytest.approx(0.6) and stats["max"].item() == pytest.approx(0.1)


def test_prompt_groups_runs_and_size_cuts():
    assert prompt_groups(["a", "a", "b", "a"]) == [("a", 0, 2), ("b", 2, 3), ("a", 3, 4)]
    assert prompt_groups(["a"] * 4, group_size=2) == [("a", 0, 2), ("a", 2, 4)]


def test_dynamic_sampling_keeps_only_mixed_groups():
    acc = torch.tensor([1, 1, 1, 0, 1, 0, 0, 0])
    keep = dynamic_sampling_keep(acc, ["a"] * 2 + ["b"] * 2 + ["c"] * 2 + ["d"] * 2)
    assert keep.tolist() == [False, False, True, True, True, True, False, False]


def test_overlong_penalty_on_response_length():
    lengths = torch.tensor([100, 2560, 2816, 3072])
    assert overlong_penalty(lengths, 3072, 512).tolist() == pytest.approx([0.0, 0.0, -0.5, -1.0])
    assert overlong_penalty(lengths, 3072, 0).tolist() == [0.0] * 4
