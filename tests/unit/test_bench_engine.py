"""tools/bench_engine.py's MFU arithmetic, by hand."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from bench_engine import _step_flops  # noqa: E402


def test_step_flops_count_the_output_layer_at_response_tokens_only():
    shape = {"hidden_size": 2, "num_layers": 1, "ffn": 3, "vocab_size": 5, "num_heads": 1, "num_kv_heads": 1}
    # per layer: q,o 2*2*2 = 8; k,v 2*2*2 = 8; MLP 3*2*3 = 18 -> 34 params; body per token 6*34 + 12*1*2*4 = 300
    # 10 tokens -> 3000; the output layer at 3 response tokens: 3 * 6 * 5 * 2 = 180
    assert _step_flops(shape, tokens=10, response_tokens=3, seq_len=4) == 3180
