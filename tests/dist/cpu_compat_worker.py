"""Rank-side checks of dcpo_mcore.engine.cpu_compat (run through tests/dist/launcher.py).

Each function returns plain data; the test asserts on it. The compat layer patches torch process-wide,
which is why these run in their own processes and never inside the pytest process.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dcpo_mcore.engine.cpu_compat import apply_cpu_compat


def check_device_redirection() -> dict:
    assert apply_cpu_compat() is True
    out = {}
    out["factory_str"] = torch.zeros(2, device="cuda").device.type
    out["factory_int"] = torch.empty(3, device=0).device.type
    out["factory_device"] = torch.tensor([1.0], device=torch.device("cuda", 0)).device.type
    t = torch.ones(2)
    out["cuda_is_noop"] = t.cuda() is t
    out["to_cuda"] = t.to("cuda:0").device.type
    out["to_dtype_kept"] = t.to(torch.float64).dtype == torch.float64
    out["type_float"] = t.type()
    out["type_bf16"] = t.bfloat16().type()
    out["type_convert"] = t.type("torch.cuda.HalfTensor").dtype == torch.float16
    out["current_device"] = torch.cuda.current_device()
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch.cuda.current_stream().wait_stream(stream)
    ev = torch.cuda.Event()
    ev.record()
    out["event_query"] = ev.query()
    torch.cuda.nvtx.range_push("x")
    torch.cuda.nvtx.range_pop()
    return out


class _AllocatesCudaInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        # Like megatron's sequence-parallel gather: a "cuda" buffer allocated inside backward.
        buf = torch.empty(g.shape, dtype=g.dtype, device=torch.cuda.current_device())
        buf.copy_(g)
        return buf * 2


def check_backward_reentry() -> list[float]:
    apply_cpu_compat()
    x = torch.ones(3, requires_grad=True)
    _AllocatesCudaInBackward.apply(x).sum().backward()
    return x.grad.tolist()


def check_rng_tracker() -> dict:
    """Megatron's tracker must seed, fork and restore on the CPU generator."""
    apply_cpu_compat()
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    ps.initialize_model_parallel(1, 1)
    torch.manual_seed(5)
    tensor_parallel.model_parallel_cuda_manual_seed(123)
    tracker = tensor_parallel.get_cuda_rng_tracker()
    before = torch.get_rng_state()
    with tracker.fork():
        a = torch.rand(4)
    after_fork = torch.get_rng_state()
    with tracker.fork():
        b = torch.rand(4)  # continues the tracked stream: differs from a
    tensor_parallel.model_parallel_cuda_manual_seed(123)
    with tracker.fork():
        a2 = torch.rand(4)  # reseeding replays the stream exactly
    return {
        "default_restored": torch.equal(before, after_fork),
        "stream_advances": not torch.equal(a, b),
        "reseed_replays": torch.equal(a, a2),
    }


def _tiny_gpt(tp: int, sequence_parallel: bool, recompute: bool, dropout: float):
    from megatron.core import tensor_parallel
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    cfg = TransformerConfig(
        num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=128,
        tensor_model_parallel_size=tp, sequence_parallel=sequence_parallel, use_cpu_initialization=True,
        normalization="RMSNorm", gated_linear_unit=True, add_bias_linear=False, add_qkv_bias=True,
        activation_func=F.silu, bias_activation_fusion=False, masked_softmax_fusion=False,
        bias_dropout_fusion=False, gradient_accumulation_fusion=False, persist_layer_norm=False,
        apply_rope_fusion=False, hidden_dropout=dropout, attention_dropout=dropout,
        recompute_granularity="full" if recompute else None,
        recompute_method="uniform" if recompute else None, recompute_num_layers=1 if recompute else None,
    )
    torch.manual_seed(7)
    tensor_parallel.model_parallel_cuda_manual_seed(7)
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    return GPTModel(config=cfg, transformer_layer_spec=spec, vocab_size=256, max_sequence_length=32,
                    position_embedding_type="rope")


def _loss_and_grads(model, seed: int):
    from megatron.core import tensor_parallel

    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (2, 16), generator=g)
    pos = torch.arange(16).unsqueeze(0).expand(2, -1)
    logits = model(ids, pos, attention_mask=None)
    loss = logits.float().pow(2).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def check_recompute_replays_dropout() -> dict:
    """Full recompute with dropout on must give exactly the no-recompute gradients (RNG replay)."""
    apply_cpu_compat()
    from megatron.core import parallel_state as ps

    ps.initialize_model_parallel(1, 1)
    ref_loss, ref_grads = _loss_and_grads(_tiny_gpt(1, False, False, dropout=0.1), seed=11)
    rc_loss, rc_grads = _loss_and_grads(_tiny_gpt(1, False, True, dropout=0.1), seed=11)
    nodrop_loss, _ = _loss_and_grads(_tiny_gpt(1, False, False, dropout=0.0), seed=11)
    return {
        "loss_equal": torch.equal(ref_loss, rc_loss),
        "grads_max_diff": max((ref_grads[n] - rc_grads[n]).abs().max().item() for n in ref_grads),
        "dropout_active": not torch.equal(ref_loss, nodrop_loss),
    }


def check_sequence_parallel_tp2() -> dict:
    """TP2 with sequence parallel equals TP2 without it: loss, and grads once SP norm grads are summed."""
    apply_cpu_compat()
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    ps.initialize_model_parallel(2, 1)
    base_loss, base_grads = _loss_and_grads(_tiny_gpt(2, False, False, 0.0), seed=3)
    sp_model = _tiny_gpt(2, True, False, 0.0)
    sp_loss, sp_grads = _loss_and_grads(sp_model, seed=3)
    tagged = 0
    for name, p in sp_model.named_parameters():
        if getattr(p, "sequence_parallel", False):
            tagged += 1
            dist.all_reduce(sp_grads[name], group=ps.get_tensor_model_parallel_group())
    return {
        "loss_diff": (base_loss - sp_loss).abs().item(),
        "grads_max_diff": max((base_grads[n] - sp_grads[n]).abs().max().item() for n in base_grads),
        "sp_tagged_params": tagged,
    }
