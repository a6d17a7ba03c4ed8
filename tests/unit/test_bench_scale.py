"""tools/bench_scale.py's arithmetic: the TP traffic formula, the growth fit and the tables."""
import importlib.util
import math
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("bench_scale", Path(__file__).resolve().parents[2] / "tools/bench_scale.py")
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def test_tp_allreduce_bytes_by_hand():
    # 2 layers -> 5 all-reduces of [T=10, h=8] float32 = 5 * 320 B = 1600 B per pass;
    # TP2 ring: each rank sends 2 * 1/2 of it = 1600 B; backward doubles; TP4: 2 * 3/4 = 1.5x
    assert bench.tp_allreduce_bytes(2, 8, 10, 1, backward=True) == 0
    assert bench.tp_allreduce_bytes(2, 8, 10, 2, backward=False) == 1600
    assert bench.tp_allreduce_bytes(2, 8, 10, 2, backward=True) == 3200
    assert bench.tp_allreduce_bytes(2, 8, 10, 4, backward=False) == 2400


def test_fit_recovers_known_exponents():
    pts = [(n, t, 3e-9 * n ** 0.9 * t ** 1.3) for n in (1e7, 5e7, 2e8) for t in (256, 1024, 4096)]
    a, b, c = bench.fit_growth(pts)
    assert a == pytest.approx(0.9, abs=1e-9) and b == pytest.approx(1.3, abs=1e-9)
    assert c == pytest.approx(math.log(3e-9), abs=1e-6)


def test_fit_refuses_what_it_cannot_determine():
    assert bench.fit_growth([(1e7, 256, 1.0), (1e7, 512, 2.0), (1e7, 1024, 4.0)]) is None  # N constant
    assert bench.fit_growth([(1e7, 256, 1.0), (2e7, 512, 2.0)]) is None  # two points
    assert bench.fit_growth([(1e7, 256, 0.0), (2e7, 512, 2.0), (3e7, 256, 1.0)]) is None  # a zero drops out


def _cell(name, params, tp, length, seconds):
    phases = {p: {"seconds": seconds, "bytes": 2.5e9 if p == "save" else 0.0, "peak_rss_bytes": [2**30] * tp}
              for p in bench.PHASES}
    return {"cell": name, "params": params, "tp": tp, "length": length, "tokens": 2 * length, "phases": phases}


def test_tables_have_a_row_per_cell_sorted_and_a_fit_row_per_phase():
    cells = [_cell("big_tp1_L256", 5e8, 1, 256, 4.0), _cell("small_tp2_L256", 7e7, 2, 256, 1.0)]
    text = bench.phase_table(cells)
    save = text.split("**save**")[1].split("**")[0]
    assert save.index("small_tp2_L256") < save.index("big_tp1_L256")
    assert "| big_tp1_L256 | 500 | 512 | 4.00 | 1,024 | 2.50 GB |" in save
    assert "| small_tp2_L256 | 70 | 512 | 1.00 | 1,024, 1,024 | 2.50 GB |" in save
    fit = bench.fit_table(cells)
    assert all(f"| {p} | - | - | 1 |" in fit for p in bench.PHASES)  # one TP1 cell: nothing to fit


def test_cell_names_and_shapes():
    assert bench.cell_name("0.5b", 2, 2048) == "0.5b_tp2_L2048"
    s = bench.SHAPES["0.5b"]
    assert (s["num_layers"], s["hidden_size"], s["num_heads"], s["num_kv_heads"], s["ffn"]) == (24, 896, 14, 2, 4864)
    assert all(v["hidden_size"] // v["num_heads"] == 64 and v["num_kv_heads"] % 2 == 0 for v in bench.SHAPES.values())
