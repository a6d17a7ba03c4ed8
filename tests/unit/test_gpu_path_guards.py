"""GPU-only paths that can be checked on CPU (docs/gpu.md): FP8 row padding, no silent fallback from TE,
packed-sequence offsets on the model's device."""
from types import SimpleNamespace

import pytest
import torch

from dcpo_mcore.engine import model_builder
from dcpo_mcore.engine.batching import BatchSettings
from dcpo_mcore.engine.forward import packed_seq_params
from dcpo_mcore.engine.layout import ParallelLayout, Precision, sequence_multiple
from dcpo_mcore.engine.policy import EngineSettings, PolicyEngine

BF16 = torch.bfloat16


@pytest.mark.parametrize("tp,sp,fp8,recipe,want", [
    (1, False, None, "delayed", 1),
    (4, False, None, "delayed", 1),      # TP without SP keeps whole sequences on every rank
    (4, True, None, "delayed", 4),       # SP: S / TP rows per rank
    (1, False, "e4m3", "delayed", 8),    # TE per-tensor FP8: rows % 8
    (4, True, "hybrid", "tensorwise", 32),   # each SP shard of S / 4 rows must divide by 8
    (2, True, "e4m3", "blockwise", 256),     # 128-row blocks per SP shard
    (8, False, "e4m3", "blockwise", 128),
])
def test_sequence_multiple_by_hand(tp, sp, fp8, recipe, want):
    layout = ParallelLayout(tp=tp, sequence_parallel=sp)
    assert sequence_multiple(layout, Precision(params_dtype=BF16, fp8=fp8, fp8_recipe=recipe)) == want


def test_the_engine_pads_micro_batches_to_that_multiple():
    settings = EngineSettings(layout=ParallelLayout(tp=4, sequence_parallel=True),
                              precision=Precision(params_dtype=BF16, fp8="e4m3"),
                              batching=BatchSettings(pad_to_multiple=3))
    engine = PolicyEngine([], None, SimpleNamespace(), settings, None, uses_te=True)
    assert engine.batching.pad_to_multiple == 96  # lcm(3, 4 * 8)


@pytest.fixture
def no_te(monkeypatch):
    model_builder.transformer_engine_available.cache_clear()
    monkeypatch.setattr(model_builder, "transformer_engine_available", lambda: (False, "ImportError: no TE"))


ARCH = SimpleNamespace(qk_norm=False)


def test_fp8_without_te_is_refused_not_ignored(no_te):
    with pytest.raises(model_builder.LayerSpecError, match=r"^model.fp8=e4m3 needs Transformer Engine.*ImportError: no TE"):
        model_builder.select_layer_spec(ARCH, fp8="e4m3")


def test_sequence_parallel_on_a_gpu_without_te_is_refused(no_te, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(model_builder.LayerSpecError, match="parallel.sequence_parallel on a GPU needs Transformer Engine"):
        model_builder.select_layer_spec(ARCH, sequence_parallel=True)
    spec, uses_te = model_builder.select_layer_spec(ARCH)  # no SP: the slow local spec, with a warning
    assert uses_te is False


def test_on_cpu_the_local_spec_serves_sequence_parallel(no_te):
    _, uses_te = model_builder.select_layer_spec(ARCH, sequence_parallel=True)  # cpu_compat teaches it SP
    assert uses_te is False


def test_packed_offsets_go_to_the_model_device_as_int32():
    mb = SimpleNamespace(cu_seqlens=torch.tensor([0, 3, 10, 12], dtype=torch.int64))
    p = packed_seq_params(mb, torch.device("meta"))
    assert p.cu_seqlens_q.device.type == "meta" and p.cu_seqlens_q.dtype == torch.int32
    assert p.max_seqlen_q == p.max_seqlen_kv == 7 and p.qkv_format == "thd"
