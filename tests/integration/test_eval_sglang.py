"""dcpo-eval against REAL SGLang servers on CPU (the session's tiny random Qwen2 behind a router):
``evaluate`` and the CLI on the first problems of the shipped parquets. The model is random, so its
accuracy is about 0; what is checked is the pipeline: problems, samples per problem, metric keys,
the JSON/JSONL outputs, greedy determinism, and one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import requires_sglang

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data" / "eval"  # the shipped DCPO evaluation parquets (data/eval/README.md)


def _data(name: str) -> str:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is not on this machine (the shipped DCPO evaluation parquets)")
    return str(path)


@pytest.fixture(scope="module")
def tokenizer(tiny_qwen2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen2)


@pytest.fixture(scope="module")
def pool():
    from dcpo_mcore.reward import RewardPool

    with RewardPool("math", num_workers=1, timeout_s=3.0) as p:
        yield p


@requires_sglang
@pytest.mark.timeout(600)
def test_greedy_avg_at_1_on_two_benchmarks_is_deterministic(sglang_servers, tokenizer, pool):
    from dcpo_mcore.data import load_prompt_dataset
    from dcpo_mcore.eval import EvalSettings, evaluate
    from dcpo_mcore.rollout import RolloutClient

    sglang_servers.wait_ready(300)
    ds = load_prompt_dataset([_data("aime_2024.parquet"), _data("math500.parquet")], tokenizer)
    settings = EvalSettings(max_new_tokens=24, max_problems=3)
    client = RolloutClient(sglang_servers)  # through the router, as the trainer does
    a, b = (evaluate(client, ds, pool, settings, tokenizer=tokenizer, keep_responses=True) for _ in range(2))
    print(f"\n[eval greedy] {a.seconds:.1f} s: {a.metrics}")
    for name in ("qwen_aime_2024", "qwen_math500"):
        pre = f"eval/{name}/"
        assert {k[len(pre):] for k in a.metrics if k.startswith(pre)} == {
            "avg@1", "format_error_ratio", "truncated_ratio", "response_length_mean", "grading_timeout_ratio",
            "problems", "samples_per_problem"}
        assert a.metrics[pre + "problems"] == 3 and a.metrics[pre + "samples_per_problem"] == 1
        assert 0.0 <= a.metrics[pre + "avg@1"] <= 1.0 and 1 <= a.metrics[pre + "response_length_mean"] <= 24
    assert [(r.dataset, r.n) for r in a.rows] == [("qwen_aime_2024", 1)] * 3 + [("qwen_math500", 1)] * 3
    firsts = [rec.key for rec in ds.records if rec.data_source == "qwen_aime_2024"][:3]  # file order
    assert [r.key for r in a.rows][:3] == firsts
    # temperature 0: the same responses, hence the same Avg@1, on every call
    assert [r.responses for r in a.rows] == [r.responses for r in b.rows] and a.metrics == b.metrics


@requires_sglang
@pytest.mark.timeout(600)
def test_sampled_avg_at_k_draws_the_replica_count(sglang_servers, tokenizer, pool):
    from dcpo_mcore.data import load_prompt_dataset
    from dcpo_mcore.eval import EvalSettings, evaluate
    from dcpo_mcore.rollout import RolloutClient

    sglang_servers.wait_ready(300)
    ds = load_prompt_dataset([_data("amc2023.parquet")], tokenizer)  # 32 copies per problem, collapsed
    res = evaluate(RolloutClient(sglang_servers), ds, pool, EvalSettings(greedy=False, max_new_tokens=8,
                                                                         max_problems=2),
                   tokenizer=tokenizer, keep_responses=True)
    print(f"\n[eval sampled] {res.seconds:.1f} s: {res.metrics}")
    assert [r.n for r in res.rows] == [32, 32] and res.metrics["eval/qwen_amc2023/samples_per_problem"] == 32
    assert 0.0 <= res.metrics["eval/qwen_amc2023/avg@32"] <= 1.0
    assert all(len(set(r.responses)) > 1 for r in res.rows)  # T=1 on a random model: samples differ


def _run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from dcpo_mcore.cli.eval import main

    code = main(argv)
    out, err = capsys.readouterr()
    print(err[-2000:])
    return code, out, err


@requires_sglang
@pytest.mark.timeout(600)
def test_cli_on_running_servers_writes_the_summary_and_per_problem_rows(sglang_servers, tmp_path, capsys):
    sglang_servers.wait_ready(300)
    out = tmp_path / "eval" / "results.json"
    # no --tokenizer: the CLI loads the one the server reports (/model_info), through the router's workers
    code, stdout, err = _run_cli(["--server-url", sglang_servers.router_url, "--data", _data("aime_2025.parquet"),
                                  _data("math500.parquet"), "--max-problems", "3", "--max-new-tokens", "16",
                                  "--out", str(out), "--grader-workers", "1"], capsys)
    assert code == 0, err
    summary = json.loads(out.read_text())
    assert set(summary["datasets"]) == {"qwen_aime_2025", "qwen_math500"}
    assert all(d["problems"] == 3 and d["samples"] == 3 for d in summary["datasets"].values())
    assert {"eval/qwen_aime_2025/avg@1", "eval/qwen_math500/avg@1"} <= set(summary["metrics"])
    assert summary["settings"]["greedy"] is True and summary["load_report"]["rows_read"] == 960 + 500
    rows = [json.loads(line) for line in (tmp_path / "eval" / "results.problems.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["n"] == 1 and set(r) >= {"key", "ground_truth", "n_correct", "n"} for r in rows)
    assert "qwen_aime_2025" in stdout and "[eval] 6/6 problems" in err
    assert all(s != "stopped" for s in sglang_servers.states().values())  # attached servers are left running


@requires_sglang
@pytest.mark.timeout(600)
def test_cli_launches_a_local_server_for_model(tiny_qwen2, tmp_path, capsys):
    out = tmp_path / "r.json"
    code, stdout, err = _run_cli(["--model", str(tiny_qwen2), "--data", _data("aime_2024.parquet"), "--sample",
                                  "--k", "2", "--max-problems", "3", "--max-new-tokens", "8", "--out", str(out),
                                  "--grader-workers", "1"], capsys)
    assert code == 0, err
    summary = json.loads(out.read_text())
    assert summary["datasets"]["qwen_aime_2024"] == {
        "metric": "eval/qwen_aime_2024/avg@2", "value": summary["metrics"]["eval/qwen_aime_2024/avg@2"],
        "problems": 3, "samples": 6}
    assert "SGLang ready" in err and (tmp_path / "sglang" / "server_0.log").is_file()
    rows = out.with_suffix(".problems.jsonl").read_text().splitlines()
    assert [json.loads(r)["n"] for r in rows] == [2, 2, 2]


@pytest.mark.timeout(120)
def test_cli_missing_file_exits_2_with_one_line(tmp_path):
    """The console entry as a user runs it: one line on stderr, no traceback, exit code 2."""
    missing = tmp_path / "nope.parquet"
    proc = subprocess.run([sys.executable, "-m", "dcpo_mcore.cli.eval", "--model", str(tmp_path), "--data",
                           str(missing)], capture_output=True, text=True, timeout=100, cwd=REPO)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (f"dcpo-eval: error: data file {missing} does not exist; "
                           "pass .parquet or .jsonl files to --data\n")
