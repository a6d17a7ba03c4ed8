"""dcpo-report on hand-written runs: PNGs exist and are real, table numbers equal hand-computed ones,
absent metrics are named, and bad input is one line on stderr with exit code 2 and nothing written."""
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from dcpo_mcore.metrics import report
from dcpo_mcore.cli.report import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAN = float("nan")
CLI = Path(sys.executable).parent / "dcpo-report"

RUN_A = [  # steps 1-3; no entropy, no response length
    {"step": 1, "reward/mean": 0.1, "reward/correct_ratio": 0.2, "clip/token_clip_ratio": 0.01, "adv/nonzero_ratio": 0.5},
    {"step": 2, "reward/mean": 0.3, "reward/correct_ratio": 0.4, "clip/token_clip_ratio": 0.02, "adv/nonzero_ratio": 0.6,
     "eval/avg@1": 0.35, "eval/math500/avg@1": 0.4},
    {"step": 3, "reward/mean": 0.5, "reward/correct_ratio": 0.9, "clip/token_clip_ratio": 0.03, "adv/nonzero_ratio": 0.7},
]
RUN_B = [  # steps 1-4; a NaN reward; no TCR / RUR / entropy
    {"step": 1, "reward/mean": 0.2, "reward/correct_ratio": 0.1, "rollout/response_length_mean": 100},
    {"step": 2, "reward/mean": "nan", "reward/correct_ratio": 0.3, "rollout/response_length_mean": 120},
    {"step": 3, "reward/mean": 0.6, "reward/correct_ratio": 0.5, "rollout/response_length_mean": 140},
    {"step": 4, "reward/mean": 0.4, "reward/correct_ratio": 0.7, "rollout/response_length_mean": 160, "eval/avg@1": 0.5},
]


def _run(root: Path, name: str, records: list[dict]) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return d


def _table(md: str, label: str) -> dict[str, list[str]]:
    """key -> [first, last, min, max, mean, points] from the run's section."""
    section = md.split(f"## Run `{label}`", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[1].startswith("`"):
            rows[cells[1].strip("`")] = cells[2:]
    return rows


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """One real report for the read-only checks below (plotting takes ~1 s, so it is shared)."""
    root = tmp_path_factory.mktemp("runs")
    a, b = _run(root, "run_a", RUN_A), _run(root, "run_b", RUN_B)
    calls = {}
    real = report.plot_metric

    def spy(series, *, title, ylabel, path):
        calls[ylabel] = [s.label for s in series]
        real(series, title=title, ylabel=ylabel, path=path)
    out = root / "cmp"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "plot_metric", spy)
        assert main([str(a), str(b), "--labels", "DCPO,GRPO", "--out", str(out)]) == 0
    return out, (out / "report.md").read_text(), calls


def test_plots_are_valid_pngs_and_runs_are_overlaid(two_runs):
    out, md, calls = two_runs
    expected = {"reward.png", "accuracy.png", "tcr.png", "rur.png", "response_length.png",
                "eval_avg_at_1.png", "eval_math500_avg_at_1.png"}
    assert {p.name for p in out.glob("*.png")} == expected
    for name in expected:
        assert (out / name).stat().st_size > 5000, name
        assert _png_size(out / name) == (700, 400)
    assert calls["reward/mean"] == ["DCPO", "GRPO"] and calls["eval/avg@1"] == ["DCPO", "GRPO"]
    assert calls["clip/token_clip_ratio"] == ["DCPO"] and calls["rollout/response_length_mean"] == ["GRPO"]
    links = [ln.split("](", 1)[1].rstrip(")") for ln in md.splitlines() if ln.startswith("![")]
    assert sorted(links) == sorted(expected)  # relative links, each one resolves
    assert all((out / link).is_file() for link in links)


def test_absent_metric_is_listed_not_plotted(two_runs):
    out, md, calls = two_runs
    assert "actor/entropy" not in calls and not (out / "entropy.png").exists()
    absent = md.split("## Absent metrics", 1)[1].split("\n## ", 1)[0]
    assert "`actor/entropy`" in absent and "`reward/mean`" not in absent
    grpo = md.split("## Run `GRPO`", 1)[1]
    assert "Absent in this run: `clip/token_clip_ratio`, `adv/nonzero_ratio`, `actor/entropy`" in grpo


def test_table_numbers_equal_hand_computed_values(two_runs):
    _, md, _ = two_runs
    dcpo, grpo = _table(md, "DCPO"), _table(md, "GRPO")
    num = lambda cells: [float(c) for c in cells[:5]] + [int(cells[5])]  # noqa: E731
    # reward A: 0.1, 0.3, 0.5 -> first .1 last .5 min .1 max .5 mean .3, 3 points
    assert num(dcpo["reward/mean"]) == pytest.approx([0.1, 0.5, 0.1, 0.5, 0.3, 3])
    # accuracy A: 0.2, 0.4, 0.9 -> mean 1.5 / 3 = 0.5
    assert num(dcpo["reward/correct_ratio"]) == pytest.approx([0.2, 0.9, 0.2, 0.9, 0.5, 3])
    assert num(dcpo["clip/token_clip_ratio"]) == pytest.approx([0.01, 0.03, 0.01, 0.03, 0.02, 3])
    assert num(dcpo["eval/math500/avg@1"]) == pytest.approx([0.4, 0.4, 0.4, 0.4, 0.4, 1])
    # reward B: 0.2, nan, 0.6, 0.4 -> first .2 last .4; finite min .2 max .6 mean 1.2 / 3 = 0.4; 4 points
    assert num(grpo["reward/mean"]) == pytest.approx([0.2, 0.4, 0.2, 0.6, 0.4, 4])
    # accuracy B: 0.1, 0.3, 0.5, 0.7 -> mean 0.4 ; length B: 100..160 -> mean 130
    assert num(grpo["reward/correct_ratio"]) == pytest.approx([0.1, 0.7, 0.1, 0.7, 0.4, 4])
    assert num(grpo["rollout/response_length_mean"]) == pytest.approx([100, 160, 100, 160, 130, 4])
    assert num(grpo["eval/avg@1"]) == pytest.approx([0.5, 0.5, 0.5, 0.5, 0.5, 1])
    assert "eval/math500/avg@1" not in grpo and "adv/nonzero_ratio" not in grpo
    assert "4 steps logged (step 1-4)" in md and "3 steps logged (step 1-3)" in md


def _cli(*args, cwd=None):
    assert CLI.is_file(), f"{CLI} missing: run .venv/bin/pip install --no-deps -e ."
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_cli_single_run_defaults_to_run_dir_report(tmp_path):
    a = _run(tmp_path, "run_a", RUN_A)
    proc = _cli(a)
    assert proc.returncode == 0, proc.stderr
    md = (a / "report" / "report.md").read_text()
    assert (a / "report" / "reward.png").read_bytes()[:8] == PNG_MAGIC
    assert "## Run `run_a`" in md and "Traceback" not in proc.stderr


def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path):
    good = _run(tmp_path, "good", RUN_A)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    proc = _cli(good, empty, "--out", out)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dcpo-report: error: ") and "metrics.jsonl" in lines[0]
    assert str(empty) in lines[0] and proc.stdout == ""
    assert not out.exists() and not (good / "report").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "good"]


def test_cli_corrupt_middle_line_names_the_line(tmp_path):
    bad = _run(tmp_path, "bad", RUN_A)
    lines = (bad / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:20]  # torn line in the middle
    (bad / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    proc = _cli(bad)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "metrics.jsonl:2:" in err[0]
    assert not (bad / "report").exists()


@pytest.mark.parametrize("argv_tail, match", [
    (["--labels", "only_one"], "1 label(s) for 2 run(s)"),
    (["--labels", "x,x"], "repeats a label"),
    (["--out", "FILE"], "is not a directory"),
])
def test_bad_arguments_exit_2(tmp_path, capsys, argv_tail, match):
    a, b = _run(tmp_path, "a", RUN_A), _run(tmp_path, "b", RUN_B)
    (tmp_path / "FILE").write_text("x")
    argv_tail = [str(tmp_path / "FILE") if x == "FILE" else x for x in argv_tail]
    assert main([str(a), str(b), *argv_tail]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]
    assert not list(tmp_path.rglob("*.png")) and not list(tmp_path.rglob("report.md"))


def test_run_without_a_complete_step_is_refused(tmp_path, capsys):
    d = tmp_path / "r"
    d.mkdir()
    (d / "metrics.jsonl").write_text('{"step": 1, "rew')  # killed during the very first write
    assert main([str(d)]) == 2
    assert "no complete step" in capsys.readouterr().err
    assert not (d / "report").exists()


def test_multi_run_default_out_is_dcpo_report_in_cwd(tmp_path, monkeypatch):
    a, b = _run(tmp_path, "a", RUN_A), _run(tmp_path, "b", RUN_B)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(report, "plot_metric", lambda series, *, title, ylabel, path: path.write_bytes(PNG_MAGIC))
    assert main([str(a), str(b)]) == 0
    md = (tmp_path / "dcpo_report" / "report.md").read_text()
    assert "## Run `a`" in md and "## Run `b`" in md  # default labels: the directory names
