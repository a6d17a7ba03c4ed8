"""tools/gpu_check.sh: the CPU dry run of every check (what the GPU run does, at toy sizes over gloo),
and the driver's promise that one failing check never hides the others."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import gpu_check  # noqa: E402


@pytest.mark.slow
def test_dry_run_passes_every_check_and_prints_the_table():
    p = subprocess.run(["bash", str(REPO / "tools/gpu_check.sh"), "--dry-run"], cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = {ln.split("|")[1].strip(): ln.split("|")[2].strip() for ln in p.stdout.splitlines()
            if ln.startswith("| ") and not ln.startswith("| check | result")}
    assert rows == {"engine": "PASS", "fp8": "SKIP", "logprobs": "PASS", "checkpoint": "PASS", "convert": "PASS",
                    "broadcast": "PASS"}, p.stdout[-3000:]
    assert "TE not installed" in p.stdout


def test_one_failing_check_is_a_row_not_the_end(monkeypatch):
    def boom(ctx):
        raise RuntimeError("deliberate\nfailure")

    monkeypatch.setattr(gpu_check, "CHECKS", {"a": boom, "b": lambda ctx: gpu_check.Row("b", "PASS", "1 tok/s")})
    monkeypatch.setattr(gpu_check, "BUDGET_S", {"a": 1, "b": 1})
    monkeypatch.setattr("bench_engine._make_model", lambda out, shape, dtype: str(out))
    args = type("A", (), {"dry_run": True, "checks": "a,b", "timeout": None, "peak_tflops": None})()
    rows = gpu_check.run(args)
    assert [(r.check, r.status) for r in rows] == [("a", "FAIL"), ("b", "PASS")]
    assert rows[0].detail.startswith("deliberate failure [")
    assert gpu_check.table(rows).splitlines()[2].startswith("| a | FAIL | - | deliberate failure")


def test_unknown_check_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["--checks", "engine,nope"])
    assert exc.value.code == 2 and "unknown check(s) ['nope']" in capsys.readouterr().err
