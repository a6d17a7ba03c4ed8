"""`dcpo-train` end to end: the megatron engine + one REAL SGLang server on CPU, a tiny model that
already half-solves the task (so rewards vary, advantages are non-zero and the weights move), and
the kill -9 resume guarantee.

One server is started for the module and every trainer run attaches to it (``rollout.server_urls``):
a trainer start then costs ~15 s instead of ~40 s. Each run pushes its own weights first, so runs
cannot see each other's weights.

Determinism: SGLang 0.5.23 on CPU cannot sample reproducibly. It ignores the per-request sampling
seeds the client sends (``SamplingBatchInfo`` builds the seed tensor only under
``--enable-deterministic-inference``, which it refuses for the CPU attention backend), so two runs
never draw the same tokens; ``test_two_cpu_runs_sample_differently`` keeps that fact checked. The
kill -9 tests therefore record the reference run's rollout batches and replay them after the kill
(tests/dist/kill_trainer.py): everything downstream of the sampler must then match the uninterrupted
run bit for bit (prompt order, rewards, SAS statistics, log-probs, every optimizer step, the weights
pushed into the real server, the checkpoints).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.integration.conftest import ARCH_FROM_CHECKPOINT, SKIP_REASON, teach_boxed_answers

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")]
REPO = Path(__file__).resolve().parents[2]
STEPS = 3
# Wall-clock and throughput keys differ between any two runs; everything else must match exactly.
VOLATILE = ("timing/", "perf/tokens_per_second", "sync/seconds", "sync/gbps", "sync/gather_seconds",
            "sync/convert_seconds", "sync/pack_seconds", "sync/broadcast_seconds", "sync/server_load_seconds",
            "sync/drain_seconds", "sync/attempts")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from dcpo_mcore.data import make_arithmetic_task
    from dcpo_mcore.hf.tiny import make_tiny_hf_model
    from dcpo_mcore.rollout import LaunchSpec, ServerManager

    root = tmp_path_factory.mktemp("trainer")
    model = make_tiny_hf_model("qwen2", root / "model", seed=5)
    train_file, eval_file = make_arithmetic_task(root / "data", seed=0, n_train=64, n_eval=16)
    teach_boxed_answers(model, train_file)
    manager = ServerManager(LaunchSpec(model_path=str(model), num_servers=1, random_seed=0,
                                       startup_timeout_s=480), root / "servers").start()
    try:
        yield {"root": root, "model": model, "train": train_file, "eval": eval_file, "url": manager.worker_urls[0]}
    finally:
        manager.shutdown()


def _args(setup, run_dir: Path, *extra: str) -> list[str]:
    return ["--config", "configs/tiny_test.yaml", f"run_dir={run_dir}", f"model.hf_path={setup['model']}",
            *ARCH_FROM_CHECKPOINT, f"data.train_files=[{setup['train']}]", "data.chat_template=none",
            f"rollout.server_urls=[{setup['url']}]", "rollout.num_servers=0", "rollout.max_prompt_tokens=64",
            "rollout.max_new_tokens=12", f"steps={STEPS}", "checkpoint.save_interval=1", "checkpoint.keep_last=3",
            "algo.mini_batch_prompts=2", "optim.lr=3e-4", *extra]


def _run(args: list[str], *hooks: str, timeout: int = 400) -> subprocess.CompletedProcess:
    """Run the trainer (with kill_trainer.py's ``hooks``, if any); output goes to files, not pipes, so a
    process a killed trainer left behind could not make this wait (it would hold a pipe open)."""
    cmd = [sys.executable, "-m", "dcpo_mcore.cli", *args] if not hooks else \
        [sys.executable, str(REPO / "tests/dist/kill_trainer.py"), *hooks, "--", *args]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=err, text=True, timeout=timeout)
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())


def _metrics(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r for r in rows}


def _stable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(VOLATILE)}


@pytest.fixture(scope="module")
def reference(setup):
    run_dir = setup["root"] / "reference"
    proc = _run(_args(setup, run_dir), "--record", str(setup["root"] / "rollouts"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_dir


def test_training_run_writes_metrics_checkpoints_and_learns_signal(reference):
    from dcpo_mcore.metrics.keys import describe

    rows = _metrics(reference)
    assert sorted(rows) == list(range(1, STEPS + 1))
    undocumented = sorted({k for r in rows.values() for k in r if k != "step" and describe(k) is None})
    assert undocumented == [], "add these to dcpo_mcore/metrics/keys.py"
    for r in rows.values():
        # the rollout carries signal: some groups are mixed, so advantages are non-zero and the loss moves
        assert 0.0 < r["adv/nonzero_ratio"] <= 1.0, r
        assert r["rollout/generated_responses"] == 16.0
        assert r["invariant/first_update_ratio_is_one"] == 1.0 and r["invariant/first_update_token_clip_ratio"] == 0.0
        assert r["invariant/loss_finite"] == 1.0 and r["optim/updates"] == 2.0
        # the trainer's old log-probs are SGLang's sampler log-probs (float32 on both sides)
        assert r["mismatch/logprob_abs_mean"] < 1e-4 and r["invariant/mismatch_within_bound"] == 1.0
        assert r["sync/logprob_max_abs_diff"] < 1e-4
        assert r["loss/grad_norm"] > 0.0
    assert any(r["actor/ppo_kl"] != 0.0 for r in rows.values())  # the second mini-batch sees a moved policy
    # every phase of every step is timed, and every rank wrote its peak RSS per phase (a checkpoint each step)
    phases = ("rollout", "old_logprobs", "train", "sync", "save")
    assert all(r[f"timing/{p}_seconds"] > 0 for r in rows.values() for p in phases), rows
    assert all(sum(r[f"timing/{p}_seconds"] for p in phases) <= r["timing/step_seconds"] for r in rows.values())
    from dcpo_mcore.metrics.phases import read_memory_rows

    memory = read_memory_rows(reference)
    assert sorted(memory) == [0] and sorted(memory[0]) == list(range(1, STEPS + 1))
    assert all(row[f"{p}_peak_rss_bytes"] > 100 * 2**20 for row in memory[0].values() for p in phases), memory
    ckpts = sorted(p.name for p in (reference / "checkpoints").glob("step_*"))
    assert ckpts == [f"step_{s:08d}" for s in range(1, STEPS + 1)]
    state = json.loads((reference / "checkpoints" / f"step_{STEPS:08d}" / "trainer_state.json").read_text())
    assert state["step"] == STEPS and state["weight_version"] == str(STEPS)
    assert len(state["sas_store"]["keys"]) == 4 * STEPS  # every prompt seen gets its SAS statistics


def _weights(ckpt: Path) -> dict:
    """Every tensor (weights and Adam state) of a checkpoint's dist_checkpointing directory, read without a
    process group."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = ckpt.parent / f"{ckpt.name}.pt"
    dcp_to_torch_save(str(ckpt / "model"), str(out))
    state = torch.load(out, weights_only=False)
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def test_two_cpu_runs_sample_differently(setup, reference):
    """The reason the resume tests replay rollouts: if this starts failing, SGLang honours the client's
    seeds on CPU and the kill tests can compare fresh rollouts instead (drop the replay)."""
    run_dir = setup["root"] / "second"
    proc = _run(_args(setup, run_dir, "steps=1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    ref, got = _metrics(reference)[1], _metrics(run_dir)[1]
    fields = ("reward/mean", "rollout/response_length_mean", "actor/entropy", "mismatch/logprob_abs_mean")
    assert any(ref[k] != got[k] for k in fields), "two runs sampled identically: SGLang is deterministic here now"


@pytest.mark.parametrize("point,step", [("rollout", 2), ("update", 2), ("sync", 2), ("save", 2),
                                        ("writers", 2)])
def test_kill9_then_resume_matches_the_uninterrupted_run(setup, reference, point, step):
    run_dir = setup["root"] / f"killed_{point}"
    replay = ("--replay", str(setup["root"] / "rollouts"))
    killed = _run(_args(setup, run_dir), *replay, "--kill", point, str(step))
    assert killed.returncode == -9, (killed.returncode, killed.stdout[-2000:], killed.stderr[-3000:])
    assert "[kill_trainer] SIGKILL" in killed.stdout
    _assert_nothing_left_holding(run_dir, "the SIGKILLed trainer")
    resumed = _run(_args(setup, run_dir), *replay)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming at step 1" in resumed.stderr, resumed.stderr[-3000:]
    _assert_same_run(reference, run_dir)


def _assert_same_run(reference: Path, run_dir: Path) -> None:
    """Every stable metric of every step, the final trainer state, weights and optimizer state are equal."""
    import torch

    ref, got = _metrics(reference), _metrics(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))  # the killed step's row is not duplicated
    for s in range(1, STEPS + 1):
        assert _stable(got[s]) == _stable(ref[s]), (s, {k: (got[s].get(k), v) for k, v in _stable(ref[s]).items()
                                                       if got[s].get(k) != v})
    final = f"step_{STEPS:08d}"
    ref_state = json.loads((reference / "checkpoints" / final / "trainer_state.json").read_text())
    got_state = json.loads((run_dir / "checkpoints" / final / "trainer_state.json").read_text())
    for key in ("step", "weight_version", "sas_store", "cursor"):
        assert got_state[key] == ref_state[key], key
    ref_w, got_w = _weights(reference / "checkpoints" / final), _weights(run_dir / "checkpoints" / final)
    assert ref_w.keys() == got_w.keys() and any(k.startswith("optimizer") for k in ref_w)
    differ = [k for k in ref_w if not torch.equal(ref_w[k], got_w[k])]
    assert not differ, f"weights / optimizer state differ from the uninterrupted run: {differ[:5]}"
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))  # the killed save's leftovers are gone


# ------------------------------------------------------------------ rollouts generated ahead (max_staleness)
@pytest.fixture(scope="module")
def ahead_reference(setup):
    """k -> the uninterrupted run at rollout.max_staleness=k (push_mode=wait), its rollouts recorded."""
    runs: dict[int, Path] = {}

    def get(k: int) -> Path:
        if k not in runs:
            run_dir = setup["root"] / f"reference_k{k}"
            proc = _run(_args(setup, run_dir, f"rollout.max_staleness={k}"), "--record",
                        str(setup["root"] / f"rollouts_k{k}"))
            assert proc.returncode == 0, proc.stderr[-4000:]
            runs[k] = run_dir
        return runs[k]

    return get


@pytest.mark.first_stack_only  # the rollout producer is ours; the engine path is the K=0 tests'
@pytest.mark.parametrize("k", [1, 2])
def test_rollouts_ahead_train_within_the_staleness_bound_with_the_correction(ahead_reference, k):
    from dcpo_mcore.metrics.keys import describe

    rows = _metrics(ahead_reference(k))
    assert sorted(rows) == list(range(1, STEPS + 1))
    undocumented = sorted({key for r in rows.values() for key in r if key != "step" and describe(key) is None})
    assert undocumented == [], "add these to dcpo_mcore/metrics/keys.py"
    # v(t) = max(t-1-k, 0): the batch of step t is t-1-v(t) versions old (docs/algorithm.md [async-rollout])
    ages = [t - 1 - max(t - 1 - k, 0) for t in range(1, STEPS + 1)]
    assert [rows[t]["rollout/staleness_max"] for t in rows] == [float(a) for a in ages]
    assert [rows[t]["rollout/staleness_mean"] for t in rows] == [float(a) for a in ages]
    for t, r in rows.items():
        assert r["rollout/dropped_stale"] == 0.0 and r["invariant/first_update_ratio_is_one"] == 1.0
        # algo.tis_cap defaults to 2 off-policy: the weights are real, and capped
        assert 0.0 < r["mismatch/tis_weight_mean"] <= 2.0 and 0.0 <= r["mismatch/tis_truncated_fraction"] <= 1.0
        if ages[t - 1] == 0:  # the step's own policy: trainer and sampler agree, and the invariant is checked
            assert r["mismatch/logprob_abs_mean"] < 1e-4 and r["invariant/mismatch_within_bound"] == 1.0
            assert abs(r["mismatch/tis_weight_mean"] - 1.0) < 1e-3
        else:  # older weights drew these tokens: the gap is real, and it is not called a broken engine
            assert r["mismatch/logprob_abs_mean"] > 1e-4 and "invariant/mismatch_within_bound" not in r
        assert 0.0 <= r["timing/overlap_ratio"] <= 1.0 and r["timing/trainer_idle_seconds"] >= 0.0
        assert r["timing/orchestration_seconds"] >= 0.0
    assert rows[2]["timing/overlap_ratio"] > 0.0  # step 2's batch was generated while step 1 trained


@pytest.mark.first_stack_only  # the rollout producer is ours; the engine path is the K=0 tests'
def test_on_policy_steps_report_no_overlap(reference):
    for r in _metrics(reference).values():
        assert r["rollout/staleness_max"] == 0.0 and r["timing/overlap_ratio"] == 0.0
        assert r["timing/trainer_idle_seconds"] > 0.0 and "mismatch/tis_weight_mean" not in r


@pytest.mark.first_stack_only  # the rollout producer is ours; the engine path is the K=0 tests'
@pytest.mark.parametrize("k,point,step", [(1, "rollout", 3), (1, "update", 3), (1, "sync", 2), (1, "save", 2),
                                          (2, "update", 2), (2, "sync", 2)])
def test_kill9_with_rollouts_ahead_resumes_exactly(setup, ahead_reference, k, point, step):
    """The checkpoint keeps the batches generated ahead (their weight versions are gone after the kill);
    the one in progress is generated again with the same version (push_mode=wait), here replayed."""
    reference = ahead_reference(k)
    run_dir = setup["root"] / f"killed_k{k}_{point}"
    replay = ("--replay", str(setup["root"] / f"rollouts_k{k}"))
    args = _args(setup, run_dir, f"rollout.max_staleness={k}")
    killed = _run(args, *replay, "--kill", point, str(step))
    assert killed.returncode == -9, (killed.returncode, killed.stdout[-2000:], killed.stderr[-3000:])
    _assert_nothing_left_holding(run_dir, "the SIGKILLed trainer")
    resumed = _run(args, *replay)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    if point != "rollout":  # (generation runs beside the first checkpoint's save: either may come first)
        assert "resuming at step" in resumed.stderr and "restored from the checkpoint" in resumed.stderr, \
            resumed.stderr[-3000:]
    _assert_same_run(reference, run_dir)


def _own_server(*extra: str) -> tuple[str, ...]:
    """Overrides for a run that launches its own SGLang server (so a killed one is restarted by us)."""
    return ("rollout.server_urls=[]", "rollout.num_servers=1", "rollout.max_staleness=1", *extra)


@pytest.mark.first_stack_only  # the rollout producer is ours; the engine path is the K=0 tests'
def test_a_server_killed_while_generating_ahead_is_never_trained_on(setup):
    """The server dies as step 3's batch starts generating, while step 2 trains. The restarted server
    answers with its start-up weights (version "default"): every group is dropped when step 3 takes the
    batch, the weights are pushed again and the groups regenerated with the step's own policy."""
    run_dir = setup["root"] / "ahead_server_killed"
    proc = _run(_args(setup, run_dir, *_own_server()), "--kill-server", "rollout", "3", timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "[kill_trainer] SIGKILL to SGLang server_0" in proc.stdout
    rows = _metrics(run_dir)
    assert sorted(rows) == [1, 2, 3]
    assert rows[2]["rollout/dropped_stale"] == 0.0 and rows[3]["rollout/dropped_stale"] == 4.0, rows[3]
    assert rows[3]["rollout/staleness_max"] == 0.0  # regenerated with version 2
    assert rows[3]["mismatch/logprob_abs_mean"] < 1e-4 and rows[3]["invariant/mismatch_within_bound"] == 1.0


@pytest.mark.first_stack_only  # the rollout producer is ours; the engine path is the K=0 tests'
def test_a_push_failing_while_generation_runs_stops_before_another_step(setup):
    """push_mode=retract: generation for step 3 runs during step 2's push, and the server dies in the
    broadcast. SGLang keeps partly updated weights, so the run stops in one line with step 2 unlogged and
    nothing trained on what the servers made after; the rerun resumes from step 1 and finishes."""
    run_dir = setup["root"] / "ahead_push_failed"
    args = _args(setup, run_dir, *_own_server("rollout.push_mode=retract"))
    proc = _run([*args, "sync.max_attempts=1"], "--kill-server", "sync", "2", timeout=900)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-4000:])
    assert "weight sync failed after 1 attempt(s)" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(_metrics(run_dir)) == [1]
    _assert_nothing_left_holding(run_dir, "the trainer stopped by a failed push")
    resumed = _run(args, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming at step 1" in resumed.stderr and sorted(_metrics(run_dir)) == [1, 2, 3]


def test_megatron_checkpoint_as_initial_policy(setup, reference):
    """Pretrain/SFT -> RL without an HF round trip: model.init_checkpoint loads a torch_dist checkpoint's
    weights. With lr 1e-30 the one RL step cannot move a float32 weight, so the new run's checkpoint holds
    exactly the weights it started from: the reference run's last ones, not hf_path's."""
    import torch

    src = reference / "checkpoints" / f"step_{STEPS:08d}"
    run_dir = setup["root"] / "from_megatron"
    proc = _run(_args(setup, run_dir, "steps=1", f"model.init_checkpoint={src}", "optim.lr=1e-30"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "initial policy weights loaded from" in proc.stderr
    start, got = _weights(src), _weights(run_dir / "checkpoints" / "step_00000001")
    names = [k for k in start if not k.startswith("optimizer") and "_extra_state" not in k]
    assert names and all(torch.allclose(got[k], start[k], rtol=0, atol=1e-20) for k in names)

    bad = _run(_args(setup, setup["root"] / "bad_init", "steps=1", f"model.init_checkpoint={setup['model']}"))
    assert bad.returncode == 1 and "is not a megatron torch_dist checkpoint" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("variant,message", [
    ({"tie_word_embeddings": True}, "model tensor(s) this model does not"),  # the checkpoint has an output layer
    ({"num_layers": 3}, "does not fit this model"),  # stacked layer tensors of another shape
])
def test_init_checkpoint_of_another_architecture_is_refused(setup, reference, variant, message):
    from dcpo_mcore.hf.tiny import make_tiny_hf_model

    other = make_tiny_hf_model("qwen2", setup["root"] / f"model_{'_'.join(variant)}", seed=5, **variant)
    src = reference / "checkpoints" / f"step_{STEPS:08d}"
    args = [a if not a.startswith("model.hf_path=") else f"model.hf_path={other}" for a in _args(setup, setup["root"] / "x")]
    proc = _run([*args, "steps=1", f"model.init_checkpoint={src}", "checkpoint.resume=never"])
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def test_resume_at_another_layout_tp2(setup, reference):
    """Resume the single-rank reference run's step-1 checkpoint on 2 ranks at TP2 (dist_checkpointing
    reshards model and optimizer), replaying the same rollouts: the next steps agree with the
    uninterrupted TP1 run up to float rounding (the TP split changes summation order)."""
    import shutil

    run_dir = setup["root"] / "resumed_tp2"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(reference / "checkpoints" / "step_00000001", run_dir / "checkpoints" / "step_00000001")
    shutil.copy(reference / "metrics.jsonl", run_dir / "metrics.jsonl")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(REPO / "tests/dist/kill_trainer.py"), "--replay", str(setup["root"] / "rollouts"), "--",
           *_args(setup, run_dir, "parallel.tensor_model_parallel_size=2")]
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True, timeout=600)
        log.seek(0)
        out = log.read()
    assert proc.returncode == 0, out[-4000:]
    assert "resuming at step 1" in out and "saved by 1 ranks and is loaded by 2" in out
    ref, got = _metrics(reference), _metrics(run_dir)
    assert sorted(got) == [1, 2, 3]
    for s in (2, 3):
        for key in ("reward/mean", "adv/nonzero_ratio", "rollout/response_length_mean", "optim/updates"):
            assert got[s][key] == ref[s][key], (s, key)
        for key in ("loss/policy", "loss/grad_norm", "actor/entropy", "mismatch/logprob_abs_mean"):
            assert got[s][key] == pytest.approx(ref[s][key], rel=1e-3, abs=1e-5), (s, key, got[s][key], ref[s][key])


def test_tp2_run_with_evaluation_before_the_first_step(setup):
    """Only rank 0 evaluates, but every rank must join its broadcast: a rank that skipped the step-0
    evaluation once took rank 0's eval metrics for the rollout's stale-group list and crashed in a
    re-push (found by tools/bench_scale.py)."""
    run_dir = setup["root"] / "tp2_eval"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "dcpo_mcore.cli", *_args(setup, run_dir, "parallel.tensor_model_parallel_size=2", "steps=2",
                                          "eval_interval=2", f"data.eval_files=[{setup['eval']}]")]
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True, timeout=600)
        log.seek(0)
        out = log.read()
    assert proc.returncode == 0, out[-4000:]
    rows = _metrics(run_dir)
    assert sorted(rows) == [0, 1, 2]
    for step in (0, 2):  # before the first step and at the last
        row = rows[step]
        assert 0.0 <= row["eval/synthetic_arith/avg@1"] <= 1.0 and row["eval/synthetic_arith/problems"] == 16.0, row
    assert "eval/synthetic_arith/avg@1" not in rows[1] and rows[2]["timing/eval_seconds"] > 0
    assert rows[1]["rollout/dropped_stale"] == 0.0 and rows[2]["rollout/dropped_stale"] == 0.0


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_a_stopped_trainer_leaves_no_sglang_server_behind(setup, tmp_path, sig):
    """scancel / kill send SIGTERM: the trainer tears the SGLang server it launched down itself. A SIGKILL
    (OOM killer, kill -9) runs no teardown: the server's guardian (rollout/guardian.py) stops it."""
    import os
    import signal
    import time

    sig = getattr(signal, sig)
    run_dir = tmp_path / "owned"
    args = [a for a in _args(setup, run_dir, "steps=50") if not a.startswith(("rollout.server_urls", "rollout.num_servers"))]
    with open(tmp_path / "log", "w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "dcpo_mcore.cli", *args, "rollout.num_servers=1"], cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and "step 1/50" not in (tmp_path / "log").read_text():
            assert proc.poll() is None, (tmp_path / "log").read_text()[-3000:]
            time.sleep(1)
        text = (tmp_path / "log").read_text()
        server_pid = int(text.split("SGLang ready: server_0=")[1].split("(pid ")[1].split(")")[0])
        proc.send_signal(sig)
        code = proc.wait(timeout=120)
        # The log's tail on failure: a fresh-clone CI run once saw exit 0 after SIGTERM (issue 12 note).
        assert code == (128 + sig if sig == signal.SIGTERM else -sig), (code, (tmp_path / "log").read_text()[-4000:])
    for _ in range(60):
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(1)
    else:
        os.kill(server_pid, signal.SIGKILL)
        pytest.fail(f"SGLang server {server_pid} outlived the trainer stopped by {sig.name}")
    _assert_nothing_left_holding(run_dir, f"the trainer stopped by {sig.name}")


def _assert_nothing_left_holding(run_dir: Path, who: str, wait_s: int = 30) -> None:
    """No process outlives ``who`` with a file of its run dir open: a forked megatron checkpoint writer,
    say, must die with a trainer killed mid-save (engine/forked_children.py)."""
    import os
    import signal

    from tests.proc_helpers import processes_holding, wait_until

    if wait_until(lambda: not processes_holding(run_dir), wait_s, poll_s=1.0):
        return
    holders = processes_holding(run_dir)
    for pid in holders:
        os.kill(pid, signal.SIGKILL)
    pytest.fail(f"processes outlived {who}, holding files in its run dir: {holders}")


def test_grpo_with_kl_uses_the_frozen_initial_policy(setup):
    """GRPO's default loss has a low_var_kl term (kl_coef 0.001): the trainer builds a frozen reference
    engine from the initial weights; the KL is 0 while the policy is the reference and grows after updates."""
    run_dir = setup["root"] / "grpo"
    proc = _run(_args(setup, run_dir, "algo.name=grpo", "steps=2"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = _metrics(run_dir)
    assert rows[1]["loss/kl"] >= 0.0 and rows[2]["loss/kl"] > 0.0
    assert rows[2]["invariant/first_update_ratio_is_one"] == 1.0


def _convert(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcpo_mcore.cli.convert", *argv, "--quiet"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_the_rl_result_exports_to_hugging_face(setup, reference, tmp_path):
    """`dcpo-convert mcore-to-hf` reads a dcpo-train checkpoint: the run directory means its newest one, the
    HF config and tokenizer come from the run's model.hf_path, and the export holds the trained weights."""
    from safetensors.torch import load_file

    out = tmp_path / "rl_hf"
    proc = _convert("mcore-to-hf", "--ckpt", str(reference), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "config.json").is_file() and list(out.glob("tokenizer*"))
    exported = load_file(out / "model.safetensors")
    start = load_file(setup["model"] / "model.safetensors")
    assert exported.keys() == start.keys()
    assert any(not torch_equal(exported[k], start[k]) for k in start)  # trained, not the starting weights
    # The export is exactly the step-3 checkpoint: Megatron's forward on it matches transformers' on the export.
    step3 = reference / "checkpoints" / "step_00000003"
    proc = _convert("check-logprobs", "--ckpt", str(step3), "--hf", str(out), "--tol", "1e-5")
    assert proc.returncode == 0, proc.stderr
    # Loading it at another layout gives the same bytes; an older step gives other weights.
    out_tp2 = tmp_path / "rl_hf_tp2"
    assert _convert("mcore-to-hf", "--ckpt", str(step3), "--out", str(out_tp2), "--tp", "2").returncode == 0
    tp2 = load_file(out_tp2 / "model.safetensors")
    assert all(torch_equal(tp2[k], exported[k]) for k in exported)
    out_step2 = tmp_path / "rl_hf_step2"
    assert _convert("mcore-to-hf", "--ckpt", str(reference / "checkpoints" / "step_00000002"),
                    "--out", str(out_step2)).returncode == 0
    assert any(not torch_equal(load_file(out_step2 / "model.safetensors")[k], exported[k]) for k in exported)


def test_exporting_a_trainer_checkpoint_with_the_wrong_hf_config_is_refused(reference, tmp_path):
    from dcpo_mcore.hf.tiny import make_tiny_hf_model

    other = make_tiny_hf_model("qwen2", tmp_path / "other", hidden_size=96, num_heads=6, num_kv_heads=3, seed=1)
    proc = _convert("mcore-to-hf", "--ckpt", str(reference), "--out", str(tmp_path / "x"), "--hf-config", str(other))
    assert proc.returncode == 2 and "does not describe the model" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "x").exists()


def torch_equal(a, b) -> bool:
    import torch

    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
