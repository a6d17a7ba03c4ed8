"""Weight sync from the megatron trainer into REAL SGLang workers (CPU, gloo; docs/platform.md [sglang-weight-update]).

The session's two workers (tests/integration/conftest.py) start with the tiny Qwen2 "A". Trainers
here are built from "B", the same architecture with other random weights, so before a push the
server's log-probs are far from the trainer's and after it they must agree to float rounding.
This module runs after the other SGLang tests (file order) and puts "A" back when it is done, so it
never leaves modified servers behind for a later test.
"""
from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from pathlib import Path

import pytest

from tests.dist.launcher import launch
from tests.integration.conftest import count_generate_requests, requires_sglang

pytestmark = [pytest.mark.integration, pytest.mark.dist, requires_sglang]
W = "tests.dist.sync_worker"


# Access-log lines of the liveness probes and the router's health checks: noise in a log tail.
_PROBE_LINES = ('"GET /health', '"GET /model_info', '"GET /server_info')


def _server_log_tails(servers, starts: list[int], lines: int = 30) -> list[str]:
    notes = []
    for i, start in enumerate(starts):
        path = Path(servers.log_path(i))
        try:
            with open(path, "rb") as f:
                f.seek(start)
                text = f.read().decode("utf-8", errors="replace")
        except OSError as exc:
            text = f"<unreadable: {exc}>"
        kept = [ln for ln in text.splitlines() if not any(p in ln for p in _PROBE_LINES)]
        notes.append(f"--- SGLang worker {i} ({servers.worker_urls[i]}): last {lines} lines of {path} "
                     f"since the test began ---\n" + ("\n".join(kept[-lines:]) or "(nothing)"))
    return notes


@contextlib.contextmanager
def server_logs_on_failure(servers):
    """Any failure inside gets the tail of what each SGLang worker logged meanwhile as a note (shown
    in the report). A worker that crashed mid-sync shows on the trainer side only as gloo's "Connection
    closed by peer ... typically caused by a remote worker crashing", which names no server and no cause."""
    starts = []
    for i in range(len(servers.worker_urls)):
        try:
            starts.append(Path(servers.log_path(i)).stat().st_size)
        except OSError:
            starts.append(0)
    try:
        yield
    except BaseException as exc:
        for note in _server_log_tails(servers, starts):
            exc.add_note(note)
        raise


def with_server_logs(test):
    """Run the test (which takes the ``servers`` fixture) inside :func:`server_logs_on_failure`."""
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        with server_logs_on_failure(kwargs["servers"]):
            return test(*args, **kwargs)
    return wrapper


@pytest.fixture(scope="module")
def model_b(tmp_path_factory, tiny_qwen2):
    from dcpo_mcore.hf.tiny import make_tiny_hf_model

    return str(make_tiny_hf_model("qwen2", tmp_path_factory.mktemp("tiny_b") / "qwen2_b", seed=11))


@pytest.fixture(scope="module")
def model_c(tmp_path_factory, tiny_qwen2):
    """A third set of weights, so a test can check the before-push error without depending on
    whether an earlier test in this module left A or B on the workers."""
    from dcpo_mcore.hf.tiny import make_tiny_hf_model

    return str(make_tiny_hf_model("qwen2", tmp_path_factory.mktemp("tiny_c") / "qwen2_c", seed=13))


@pytest.fixture(scope="module")
def servers(sglang_servers, tiny_qwen2):
    yield sglang_servers
    # Put model A back on both workers for any test that runs later in the session.
    launch(f"{W}:push_and_verify", world_size=1, args=(str(tiny_qwen2), sglang_servers.worker_urls, {"tp": 1}, "A"),
           timeout_s=300)


@pytest.mark.timeout(600)
@with_server_logs
def test_verification_feeds_every_data_parallel_rank(servers, model_c):
    """DP4 with the 2 fixed verification prompts: each rank still gets a sample (the recipes run DP4-DP8).
    It pushes C, not B: the TP2xPP2 test below needs workers that do not already hold B."""
    res = launch(f"{W}:push_and_verify", world_size=4, args=(model_c, servers.worker_urls, {"tp": 1}, "c-dp4"),
                 timeout_s=400)
    assert "differs from the trainer by" in res[0]["before_error"]
    assert all(r["after_diff"] < 1e-5 for r in res), [r["after_diff"] for r in res]


@pytest.mark.timeout(600)
@with_server_logs
def test_tp2_pp2_push_makes_server_logprobs_equal_the_trainers(servers, model_b):
    res = launch(f"{W}:push_and_verify", world_size=4,
                 args=(model_b, servers.worker_urls, {"tp": 2, "pp": 2}, "b-1"),
                 kwargs={"bucket_bytes": 64 << 10}, timeout_s=400)
    r0 = res[0]
    # Before: the servers run other weights (A, or C from the DP4 test), so verification stops with a
    # one-line error naming a server.
    assert r0["before_error"] is not None and "\n" not in r0["before_error"]
    assert "differs from the trainer by" in r0["before_error"]
    # After: both workers equal the TP2xPP2 trainer to float rounding (issue: within 1e-5).
    assert r0["after_diff"] <= 1e-5, r0["after_diff"]
    assert all(r["after_diff"] == r0["after_diff"] for r in res)  # every rank got the same verdict
    assert r0["versions"] == ["b-1", "b-1"]
    m = r0["metrics"]
    assert m["sync/buckets"] > 3  # 64 KiB buckets: several, so gather/broadcast overlap is exercised
    assert m["sync/bytes"] > 0 and m["sync/gbps"] > 0 and m["sync/attempts"] == 1
    for k in ("sync/seconds", "sync/gather_seconds", "sync/convert_seconds", "sync/broadcast_seconds",
              "sync/server_load_seconds"):
        assert m[k] >= 0.0, k


@pytest.mark.timeout(600)
@with_server_logs
def test_router_spreads_generation_and_samples_carry_the_pushed_version(servers, model_b):
    from dcpo_mcore.rollout import PromptInput, RolloutClient, SamplingParams

    launch(f"{W}:push_and_verify", world_size=2, args=(model_b, servers.worker_urls, {"tp": 2}, "b-router"),
           timeout_s=300)
    before = [count_generate_requests(servers.log_path(i)) for i in range(2)]
    client = RolloutClient(servers)  # the router in front of both workers
    prompts = [PromptInput(key=f"p{i}", input_ids=[5 + i, 17, 42, 9]) for i in range(8)]
    groups = client.generate_sync(prompts, SamplingParams(temperature=1.0, max_new_tokens=6), n=4)
    versions = {s.weight_version for g in groups for s in g}
    assert versions == {"b-router"}
    served = [count_generate_requests(servers.log_path(i)) - before[i] for i in range(2)]
    assert all(n > 0 for n in served), served  # both workers generated


@pytest.mark.timeout(900)
@with_server_logs
def test_killed_server_is_restarted_and_re_pushed(servers, model_b, tmp_path):
    import threading

    result = {}

    def run():
        try:
            result["res"] = launch(f"{W}:push_twice_across_a_restart", world_size=1,
                                   args=(model_b, servers.worker_urls, str(tmp_path)), timeout_s=700)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            result["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 400
    while not (tmp_path / "pushed").exists():
        assert t.is_alive() and time.monotonic() < deadline, result.get("error")
        time.sleep(0.2)
    restarts = servers.restarts()
    pid = servers.pids()["server_1"]
    os.kill(pid, signal.SIGKILL)
    (tmp_path / "killed").write_text(str(pid))
    t.join(800)
    assert "error" not in result, result.get("error")
    r0 = result["res"][0]
    assert servers.worker_urls[1] in r0["stale_after_kill"] or r0["stale_after_kill"] == []
    assert r0["versions"] == ["v2", "v2"] and r0["stale_after_push"] == []
    assert r0["v2"]["sync/logprob_max_abs_diff"] <= 1e-5
    # The push only needs the restarted server's HTTP side (/model_info); the manager counts the restart
    # once its own readiness probe (a generation) passes, which can come a moment later.
    deadline = time.monotonic() + 120
    while sum(servers.restarts().values()) < sum(restarts.values()) + 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert sum(servers.restarts().values()) == sum(restarts.values()) + 1, servers


@pytest.mark.timeout(600)
@with_server_logs
def test_bad_buckets_wrong_url_give_one_line_errors_and_a_push_repairs(servers, model_b):
    r0 = launch(f"{W}:bad_bucket", world_size=1, args=(model_b, servers.worker_urls[0]), timeout_s=400)[0]
    expect = {"shape": "has shape [67] but the model's is [64]", "dtype": "has dtype int64",
              "name": "is not a tensor of the model", "size": "describe 256"}
    for key, text in expect.items():
        assert r0[key] is not None and "\n" not in r0[key], (key, r0[key])
        assert "bucket 0" in r0[key] and text in r0[key], (key, r0[key])
    assert r0["repair_diff"] <= 1e-5
    assert r0["wrong_url"] is not None and "\n" not in r0["wrong_url"] and "127.0.0.1:9" in r0["wrong_url"]


@pytest.mark.timeout(600)
@with_server_logs
def test_incompatible_trainer_model_stops_with_one_line(servers, tmp_path):
    from dcpo_mcore.hf.tiny import make_tiny_hf_model

    other = make_tiny_hf_model("qwen2", tmp_path / "wide", hidden_size=96, num_heads=4, num_kv_heads=2, seed=5)
    r0 = launch(f"{W}:incompatible_model", world_size=1, args=(str(other), servers.worker_urls[0]), timeout_s=400)[0]
    assert r0["error"] is not None and "\n" not in r0["error"]
    assert "weight sync failed" in r0["error"] or "does not fit" in r0["error"]
