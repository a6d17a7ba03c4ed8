"""Real-component fixtures. The SGLang ones start the REAL server (sglang 0.5.23, CPU engine + the
CPU compatibility shim when there is no GPU) on a tiny local Qwen2, once per session: two workers
behind a real sglang-router. Single-server tests address worker 0 directly.

Skipped, with the reason, when the interpreter the servers run under (``default_server_python``: this
venv, or ``.venv`` for the Python 3.12 stack) lacks the pinned sglang (``bash tools/setup_env.sh``
installs it).
"""
from __future__ import annotations

import importlib.util
import logging
import sys
import time
from pathlib import Path

import pytest

from dcpo_mcore.rollout.pins import SGLANG_ROUTER_VERSION, SGLANG_VERSION


def sglang_skip_reason() -> str | None:
    """Why the real-SGLang tests cannot run here (None = they can)."""
    from dcpo_mcore.rollout.server import default_server_python, installed_version

    fix = "run `bash tools/setup_env.sh`"
    python = default_server_python()
    where = "this venv" if python == sys.executable else python
    if installed_version(python, "sglang") != SGLANG_VERSION:
        return f"sglang {SGLANG_VERSION} is not installed in {where} ({fix})"
    if installed_version(python, "sglang-router") != SGLANG_ROUTER_VERSION:
        return f"sglang-router {SGLANG_ROUTER_VERSION} is not installed in {where} ({fix})"
    if importlib.util.find_spec("aiohttp") is None:
        return f"aiohttp (the rollout client's transport) is not installed in this venv ({fix})"
    return None


SKIP_REASON = sglang_skip_reason()
# dcpo-train overrides for a run on a generated checkpoint: configs/tiny_test.yaml writes an architecture
# out, and the checkpoint's config.json must define it instead (a disagreeing YAML value is refused).
ARCH_FROM_CHECKPOINT = ("model.num_layers=null", "model.hidden_size=null", "model.ffn_hidden_size=null",
                        "model.num_attention_heads=null", "model.num_query_groups=null", "model.vocab_size=null",
                        "model.max_position_embeddings=null")
requires_sglang = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")


def teach_boxed_answers(model_dir: Path, train_file: Path, steps: int = 150) -> None:
    """A few seconds of supervised training in plain transformers, so sampling at T=1 is right
    some of the time (a random model never writes \\boxed{}, and every reward would be -1). It teaches
    the raw prompt text: run the trainer with ``data.chat_template=none`` (150 steps: about 95% of
    T=1 samples are well-formed and 70% right, measured on the arithmetic task)."""
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rows = pq.read_table(train_file).to_pylist()
    texts = [(r["prompt"][-1]["content"], f"\\boxed{{{r['reward_model']['ground_truth']}}}") for r in rows]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(texts), (32,), generator=gen).tolist()
        batch = []
        for i in idx:
            q, a = texts[i]
            p = tok.encode(q, add_special_tokens=False)
            r = tok.encode(a, add_special_tokens=False) + [tok.eos_token_id]
            batch.append((p + r, [-100] * len(p) + r))
        width = max(len(x) for x, _ in batch)
        ids = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x, _ in batch])
        labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in batch])
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(model_dir)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    from dcpo_mcore.hf.tiny import make_tiny_hf_model

    return make_tiny_hf_model("qwen2", tmp_path_factory.mktemp("tiny") / "qwen2", seed=3)


@pytest.fixture(scope="session")
def sglang_servers(tiny_qwen2, tmp_path_factory):
    """Two real SGLang workers + a real sglang-router (started in parallel; ~25-60 s on 2 cores)."""
    if SKIP_REASON is not None:
        pytest.skip(SKIP_REASON)
    from dcpo_mcore.rollout import LaunchSpec, ServerManager

    logging.getLogger("dcpo_mcore.rollout").setLevel(logging.INFO)
    run_dir = tmp_path_factory.mktemp("run")
    spec = LaunchSpec(model_path=str(tiny_qwen2), num_servers=2, device="auto", random_seed=0,
                      startup_timeout_s=480, shutdown_grace_s=15, max_restarts=2)
    t0 = time.monotonic()
    manager = ServerManager(spec, run_dir).start()
    manager.startup_s = time.monotonic() - t0
    print(f"\n[sglang] 2 servers + router healthy in {manager.startup_s:.0f} s: {manager}")
    try:
        yield manager
    finally:
        manager.shutdown()


@pytest.fixture(scope="session")
def hf_tiny(tiny_qwen2):
    """The same tiny model in Hugging Face transformers (float32, eval) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_qwen2)


def count_generate_requests(log_path: Path) -> int:
    """Served /generate requests in a server log (uvicorn's access log lines)."""
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if '"POST /generate HTTP' in line and " 200" in line)
