"""The trainer hands every `parallel` setting to the engine (trainer/setup.py engine_layout): the
production recipes set recompute: full, which was once accepted and then dropped on the way."""
from dataclasses import fields
from pathlib import Path

import pytest

from dcpo_mcore.config.loader import load_config
from dcpo_mcore.engine.layout import ParallelLayout, Precision
from dcpo_mcore.engine.model_builder import build_transformer_config
from dcpo_mcore.trainer.setup import engine_layout

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p.stem for p in (ROOT / "configs").glob("qwen2.5-*.yaml"))
# config field -> ParallelLayout field, for the names that differ
RENAMED = {"tp": "tensor_model_parallel_size", "pp": "pipeline_model_parallel_size",
           "vpp": "virtual_pipeline_model_parallel_size"}


def test_every_layout_field_comes_from_the_config():
    cfg = load_config(ROOT / "configs/tiny_test.yaml", [
        "model.num_layers=4", "parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=2",
        "parallel.virtual_pipeline_model_parallel_size=2", "parallel.sequence_parallel=true",
        "parallel.use_distributed_optimizer=true", "parallel.recompute=selective"])
    layout = engine_layout(cfg.parallel)
    defaults = ParallelLayout()
    for f in fields(ParallelLayout):
        got, want = getattr(layout, f.name), getattr(cfg.parallel, RENAMED.get(f.name, f.name))
        assert got == want, f.name
        assert got != getattr(defaults, f.name), f"{f.name}: the check above cannot tell it was passed"


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_recompute_reaches_megatron(recipe):
    cfg = load_config(ROOT / f"configs/{recipe}.yaml")
    assert cfg.parallel.recompute == "full"
    from dcpo_mcore.launch.plan import arch_from_config

    tc = build_transformer_config(arch_from_config(cfg), engine_layout(cfg.parallel), Precision(), on_gpu=False)
    assert (tc.recompute_granularity, tc.recompute_method, tc.recompute_num_layers) == ("full", "uniform", 1)
