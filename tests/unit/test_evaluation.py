"""dcpo_mcore.eval and dcpo-eval without SGLang: a scripted fake client (its answers are chosen
per problem and sample, so every metric is hand-computable), the in-process math verifier, and the
stdlib fake SGLang server for the seeded client and the CLI's happy path."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from dcpo_mcore.data import LoadReport, PromptDataset, PromptRecord, load_prompt_dataset
from dcpo_mcore.eval.evaluate import EvalSettings, evaluate, metric_label
from dcpo_mcore.reward import MathVerifier
from dcpo_mcore.rollout.wire import FinishReason, GenerateResponse

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ helpers
def _record(key: str, gt: str, source: str = "toy", ids=(1, 2, 3)) -> PromptRecord:
    return PromptRecord(key=key, messages=[{"role": "user", "content": key}], prompt_text=key,
                        prompt_ids=list(ids), ground_truth=gt, data_source=source, index=key)


def _dataset(records: list[PromptRecord], replicas: dict[str, int] | None = None) -> PromptDataset:
    counts = replicas or {}
    return PromptDataset(records, LoadReport(), {r.key: counts.get(r.key, 1) for r in records})


class FakeClient:
    """Answers sample j of a problem from ``script(key, j) -> (text, n_tokens, finish)``; records calls."""

    def __init__(self, script):
        self.script, self.calls = script, []

    async def generate(self, prompts, sampling, *, n=1, step=0, return_logprob=True):
        self.calls.append({"prompts": list(prompts), "sampling": sampling, "n": n, "step": step,
                           "return_logprob": return_logprob})
        out = []
        for p in prompts:
            group = []
            for j in range(n):
                text, n_tokens, finish = self.script(p.key.split("#eval")[0], j)
                group.append(GenerateResponse(output_ids=list(range(n_tokens)), text=text,
                                              finish_reason=FinishReason(type=finish)))
            out.append(group)
        return out


def _by_correct_count(correct: dict[str, int], gts: dict[str, str], no_box: dict[str, int] | None = None):
    """Sample j is right for j < correct[key]; of the rest, the first no_box[key] have no \\boxed{}."""
    no_box = no_box or {}

    def script(key, j):
        if j < correct[key]:
            return f"so the answer is \\boxed{{{gts[key]}}}", 10, "stop"
        if j < correct[key] + no_box.get(key, 0):
            return "I give up", 20, "length"
        return "\\boxed{-12345}", 30, "stop"
    return script


# ------------------------------------------------------------------------------------------ Avg@k values
def test_avg_at_k_is_the_mean_over_problems_of_correct_over_k():
    gts = {"p1": "7", "p2": "\\frac{1}{2}", "p3": "42"}
    client = FakeClient(_by_correct_count({"p1": 4, "p2": 1, "p3": 0}, gts, no_box={"p3": 2}))
    ds = _dataset([_record(k, v) for k, v in gts.items()])
    res = evaluate(client, ds, MathVerifier(), EvalSettings(k=4, greedy=False))
    m = res.metrics
    assert m["eval/toy/avg@4"] == pytest.approx((4 / 4 + 1 / 4 + 0 / 4) / 3)  # 0.41666...
    assert m["eval/toy/format_error_ratio"] == pytest.approx(2 / 12)
    # lengths: p1 4x10; p2 10 + 3x30; p3 2x20 + 2x30  -> 40 + 100 + 100 = 240 over 12 samples
    assert m["eval/toy/response_length_mean"] == pytest.approx(240 / 12)
    assert m["eval/toy/truncated_ratio"] == pytest.approx(2 / 12)
    assert m["eval/toy/problems"] == 3 and m["eval/toy/samples_per_problem"] == 4
    assert m["eval/toy/grading_timeout_ratio"] == 0
    assert [(r.key, r.n_correct, r.n, r.format_errors) for r in res.rows] == [
        ("p1", 4, 4, 0), ("p2", 1, 4, 0), ("p3", 0, 4, 2)]
    assert res.datasets == {"toy": {"metric": "eval/toy/avg@4", "value": m["eval/toy/avg@4"], "problems": 3,
                                    "samples": 12}}


def test_problems_weigh_equally_whatever_their_k():
    """Mixed replica counts (auto k): Avg@k is the per-problem mean, not the pooled sample accuracy."""
    gts = {"a": "1", "b": "2"}
    client = FakeClient(_by_correct_count({"a": 1, "b": 0}, gts))  # a: 1/1 right, b: 0/3
    ds = _dataset([_record("a", "1"), _record("b", "2")], replicas={"a": 1, "b": 3})
    res = evaluate(client, ds, MathVerifier(), EvalSettings(greedy=False))
    assert res.metrics["eval/toy/avg@k"] == pytest.approx(0.5)  # pooled would be 1/4
    assert res.metrics["eval/toy/samples_per_problem"] == pytest.approx(2.0)
    assert sorted(c["n"] for c in client.calls) == [1, 3]  # one generate() per distinct k


def test_metric_labels():
    assert metric_label(True, [1, 1]) == "avg@1"
    assert metric_label(False, [32, 32]) == "avg@32"
    assert metric_label(False, [1]) == "avg@1_sampled"  # never overwrites the greedy Avg@1
    assert metric_label(False, [32, 1]) == "avg@k"


# ------------------------------------------------------------------------------------------ replicas
def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(source: str, problems: dict, copies: int) -> list[dict]:
    return [{"data_source": source, "prompt": [{"role": "user", "content": f"Q{idx}: what is {gt}?"}],
             "reward_model": {"ground_truth": gt}, "extra_info": {"index": idx}}
            for _ in range(copies) for idx, gt in problems.items()]


class CharTokenizer:
    """Enough of a tokenizer for the loader with chat_template=none, and for decoding."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) for c in t] for t in texts]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


@pytest.mark.parametrize("dedup", [True, False])
def test_replicas_are_one_problem_and_default_k_is_their_count(tmp_path, dedup):
    f = _write_jsonl(tmp_path / "aime.jsonl", _rows("qwen_aime", {0: "3", 1: "5"}, copies=8))
    ds = load_prompt_dataset([f], CharTokenizer(), chat_template="none", dedup_replicas=dedup)
    assert len(ds.records) == (2 if dedup else 16) and set(ds.replica_counts.values()) == {8}
    pool = MathVerifier()
    gts = {"qwen_aime:0": "3", "qwen_aime:1": "5"}
    client = FakeClient(_by_correct_count({"qwen_aime:0": 2, "qwen_aime:1": 8}, gts))
    sampled = evaluate(client, ds, pool, EvalSettings(greedy=False))  # k from the replica count
    assert [(r.key, r.n, r.n_correct) for r in sampled.rows] == [("qwen_aime:0", 8, 2), ("qwen_aime:1", 8, 8)]
    assert sampled.metrics["eval/qwen_aime/avg@8"] == pytest.approx((2 / 8 + 1) / 2)
    assert client.calls[-1]["prompts"][0].input_ids == ds.records[0].prompt_ids  # ids, not text
    explicit = evaluate(client, ds, pool, EvalSettings(greedy=False, k=3))  # an explicit k wins
    assert [r.n for r in explicit.rows] == [3, 3] and "eval/qwen_aime/avg@3" in explicit.metrics
    greedy = evaluate(client, ds, pool, EvalSettings())  # greedy: once per unique problem
    assert [r.n for r in greedy.rows] == [1, 1] and greedy.metrics["eval/qwen_aime/avg@1"] == 1.0


def test_each_data_source_is_its_own_dataset_and_max_problems_applies_to_each(tmp_path):
    files = [_write_jsonl(tmp_path / "a.jsonl", _rows("bench/a", {i: str(i) for i in range(5)}, 1)),
             _write_jsonl(tmp_path / "b.jsonl", _rows("bench b", {i: str(i) for i in range(4)}, 2))]
    ds = load_prompt_dataset(files, CharTokenizer(), chat_template="none")
    client = FakeClient(lambda key, j: ("\\boxed{0}", 5, "stop"))
    res = evaluate(client, ds, MathVerifier(), EvalSettings(max_problems=3))
    assert [r.key for r in res.rows] == ["bench/a:0", "bench/a:1", "bench/a:2", "bench b:0", "bench b:1", "bench b:2"]
    # names become one key segment; only index 0 has answer "0"
    assert res.metrics["eval/bench_a/avg@1"] == pytest.approx(1 / 3)
    assert res.metrics["eval/bench_b/problems"] == 3
    named = evaluate(client, ds, MathVerifier(), EvalSettings(max_problems=2), name="heldout")
    assert [r.dataset for r in named.rows] == ["heldout"] * 2 and "eval/heldout/avg@1" in named.metrics


# ------------------------------------------------------------------------------------------ what is sent
def test_greedy_sends_temperature_zero_and_one_sample():
    client = FakeClient(lambda key, j: ("x", 1, "stop"))
    ds = _dataset([_record("a", "1"), _record("b", "2")], replicas={"a": 32, "b": 32})
    evaluate(client, ds, MathVerifier(), EvalSettings(max_new_tokens=77), step=5)
    [call] = client.calls
    sp = call["sampling"]
    assert (sp.temperature, sp.top_p, sp.top_k, sp.max_new_tokens) == (0.0, 1.0, -1, 77)
    assert call["n"] == 1 and call["step"] == 5 and call["return_logprob"] is False


def test_sampled_sends_t1_top_p1_and_k_samples():
    client = FakeClient(lambda key, j: ("x", 1, "stop"))
    evaluate(client, _dataset([_record("a", "1")]), MathVerifier(), EvalSettings(k=5, greedy=False))
    [call] = client.calls
    sp = call["sampling"]
    assert (sp.temperature, sp.top_p, sp.top_k, sp.max_new_tokens) == (1.0, 1.0, -1, 3072)
    assert call["n"] == 5


def test_settings_refuse_greedy_with_k_above_one_and_bad_values():
    with pytest.raises(ValueError, match="greedy=False"):
        EvalSettings(k=4)
    for bad in (dict(k=0, greedy=False), dict(max_new_tokens=0), dict(max_problems=0)):
        with pytest.raises(ValueError):
            EvalSettings(**bad)


def test_seed_keys_are_deterministic_and_differ_by_seed():
    def keys(seed):
        client = FakeClient(lambda key, j: ("x", 1, "stop"))
        evaluate(client, _dataset([_record("a", "1")]), MathVerifier(), EvalSettings(k=2, greedy=False, seed=seed))
        return [p.key for c in client.calls for p in c["prompts"]]
    assert keys(3) == keys(3) == ["a#eval3"] and keys(4) == ["a#eval4"]


# ------------------------------------------------------------------------------------------ decoding, chunks, output
def test_tokenizer_decodes_the_output_ids_and_keep_responses():
    client = FakeClient(lambda key, j: ("server text", 3, "stop"))
    ds = _dataset([_record("a", "1")])
    res = evaluate(client, ds, MathVerifier(), EvalSettings(), tokenizer=CharTokenizer(), keep_responses=True)
    assert res.rows[0].responses == ["\x00\x01\x02"] and res.rows[0].preds == [None]
    res = evaluate(client, ds, MathVerifier(), EvalSettings(), keep_responses=True)  # no tokenizer: server text
    assert res.rows[0].responses == ["server text"]


def test_chunks_keep_order_and_print_one_progress_line_each():
    gts = {f"p{i}": str(i) for i in range(5)}
    client = FakeClient(lambda key, j: (f"\\boxed{{{key[1:]}}}", 4, "stop"))
    stream = io.StringIO()
    res = evaluate(client, _dataset([_record(k, v) for k, v in gts.items()]), MathVerifier(),
                   EvalSettings(k=2, greedy=False), progress=True, chunk_samples=4, stream=stream)
    assert [len(c["prompts"]) for c in client.calls] == [2, 2, 1]
    assert [r.key for r in res.rows] == list(gts) and res.metrics["eval/toy/avg@2"] == 1.0
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("[eval] 5/5 problems, 10/10 sampled samples")


def test_write_json_summary_and_per_problem_jsonl(tmp_path):
    client = FakeClient(_by_correct_count({"a": 1, "b": 0}, {"a": "1", "b": "2"}))
    res = evaluate(client, _dataset([_record("a", "1"), _record("b", "2")]), MathVerifier(), EvalSettings(), step=9)
    json_path, jsonl_path = res.write(tmp_path / "out" / "res.json", model="m")
    assert jsonl_path == tmp_path / "out" / "res.problems.jsonl"
    summary = json.loads(json_path.read_text())
    assert summary["step"] == 9 and summary["model"] == "m" and summary["metrics"]["eval/toy/avg@1"] == 0.5
    assert summary["settings"] == {"k": None, "greedy": True, "max_new_tokens": 3072, "seed": 0, "max_problems": None}
    rows = [json.loads(line) for line in jsonl_path.read_text().splitlines()]
    assert [(r["key"], r["ground_truth"], r["n_correct"], r["n"]) for r in rows] == [("a", "1", 1, 1), ("b", "2", 0, 1)]
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_evaluate_inside_a_running_loop_points_to_the_async_version():
    import asyncio

    async def inner():
        evaluate(FakeClient(None), _dataset([_record("a", "1")]), MathVerifier(), EvalSettings())
    with pytest.raises(RuntimeError, match="evaluate_async"):
        asyncio.run(inner())


# ------------------------------------------------------------------------------------------ the real client, seeded
@pytest.fixture()
def fake_sglang(tmp_path):
    """The stdlib fake SGLang server (it honours sampling_seed: the same seed gives the same ids)."""
    pytest.importorskip("aiohttp")
    from dcpo_mcore.rollout import LaunchSpec, ServerManager

    env = {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    spec = LaunchSpec(model_path="fake-model", device="cpu", server_module="tests.fakes.fake_sglang",
                      shutdown_grace_s=3.0, startup_timeout_s=60.0, env=env)
    with ServerManager(spec, tmp_path / "run") as manager:
        yield manager


def test_seeded_client_gives_the_same_samples_for_the_same_seed(fake_sglang):
    from dcpo_mcore.rollout import RolloutClient

    ds = _dataset([_record("a", "1", ids=(5, 6)), _record("b", "2", ids=(7, 8))])

    def run(eval_seed):
        client = RolloutClient(fake_sglang, seed=11)
        res = evaluate(client, ds, MathVerifier(), EvalSettings(k=3, greedy=False, max_new_tokens=8, seed=eval_seed),
                       keep_responses=True)
        return [r.responses for r in res.rows]

    first = run(0)
    assert run(0) == first and run(1) != first
    assert len(set(first[0])) > 1  # the k samples of one problem differ


# ------------------------------------------------------------------------------------------ CLI
def _cli(argv, capsys):
    from dcpo_mcore.cli.eval import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, expected", [
    (["--model", "{tmp}", "--data", "{tmp}/nope.parquet"], "data file {tmp}/nope.parquet does not exist"),
    (["--data", "{tmp}/d.jsonl"], "give --model HF_DIR"),
    (["--model", "{tmp}", "--data", "{tmp}/d.jsonl", "--k", "4"], "--k 4 needs --sample"),
    (["--model", "{tmp}/missing", "--data", "{tmp}/d.jsonl"], "is not a directory"),
    (["--model", "{tmp}", "--data", "{tmp}/d.jsonl"], "has no config.json"),
    (["--model", "{tmp}", "--data", "{tmp}/d.jsonl", "--max-problems", "0"], "--max-problems must be >= 1"),
    (["--model", "{tmp}", "--data", "{tmp}/d.jsonl", "--greedy", "--sample"], "not allowed with argument"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, expected):
    (tmp_path / "d.jsonl").write_text("")
    code, out, err = _cli([a.format(tmp=tmp_path) for a in argv], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("dcpo-eval: error: ") and expected.format(tmp=tmp_path) in err


def test_cli_unreachable_server_is_one_line_and_exit_2(tmp_path, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    (tmp_path / "d.jsonl").write_text("")
    code, _, err = _cli(["--server-url", url, "--tokenizer", str(tmp_path), "--data", str(tmp_path / "d.jsonl")],
                        capsys)
    assert code == 2 and err.count("\n") == 1 and url in err and "unreachable" in err


def test_cli_against_the_fake_sglang_writes_json_and_jsonl(fake_sglang, tmp_path, capsys):
    from dcpo_mcore.hf.tiny import make_bpe_tokenizer

    make_bpe_tokenizer(tmp_path / "tok", vocab_size=300)
    data = _write_jsonl(tmp_path / "d.jsonl", _rows("toy_aime", {i: str(i) for i in range(4)}, copies=3))
    out = tmp_path / "res" / "r.json"
    code, stdout, err = _cli(["--server-url", fake_sglang.worker_urls[0], "--tokenizer", str(tmp_path / "tok"),
                              "--data", str(data), "--sample", "--max-problems", "3", "--max-new-tokens", "6",
                              "--out", str(out), "--grader-workers", "1"], capsys)
    assert code == 0, err
    summary = json.loads(out.read_text())
    assert summary["datasets"]["toy_aime"]["problems"] == 3 and summary["datasets"]["toy_aime"]["samples"] == 9
    assert summary["metrics"]["eval/toy_aime/avg@3"] == 0.0  # the fake server's tokens never box an answer
    assert summary["metrics"]["eval/toy_aime/format_error_ratio"] == 1.0
    rows = [json.loads(line) for line in out.with_suffix(".problems.jsonl").read_text().splitlines()]
    assert [(r["key"], r["n"]) for r in rows] == [("toy_aime:0", 3), ("toy_aime:1", 3), ("toy_aime:2", 3)]
    assert "toy_aime" in stdout and "avg@3" in stdout
    assert "[eval] 3/3 problems, 9/9 sampled samples" in err
