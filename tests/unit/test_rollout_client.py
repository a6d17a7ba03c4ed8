"""The rollout client's retry / backoff / failover / timeout / abort / concurrency logic, against small
scripted HTTP servers on localhost (no SGLang). The real server is exercised in tests/integration."""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("aiohttp")

from dcpo_mcore.rollout import (ClientOptions, GenerationAborted, PromptInput, RequestRejected,  # noqa: E402
                                RolloutClient, SamplingParams, ServerUnreachable, derive_seed)
from tests.fakes.json_http import send_json  # noqa: E402

FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05)


def _answer(body: dict) -> dict:
    """Echo the prompt and the seed back, so tests can check what was sent and where it lands."""
    ids = body["input_ids"]
    seed = body["sampling_params"].get("sampling_seed")
    out = ids[-1:] + [len(ids)]
    return {"text": "", "output_ids": out, "meta_info": {
        "id": body.get("rid"), "finish_reason": {"type": "length", "length": 2}, "weight_version": f"seed={seed}",
        "output_token_logprobs": [[-1.0, t, None] for t in out]}}


class Scripted:
    """A /generate server whose behaviour per call is ``script(call_number, body)`` ->
    ("ok" | "close" | ("status", code) | ("abort",), delay_s)."""

    def __init__(self, script=lambda call, body: ("ok", 0.0)):
        self.script, self.calls, self.bodies, self.aborted = script, 0, [], []
        self.inflight = self.max_inflight = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/abort_request":
                    outer.aborted.append(body.get("rid"))
                    return self._send(200, {})
                with outer.lock:
                    outer.calls += 1
                    call = outer.calls
                    outer.bodies.append(body)
                    outer.inflight += 1
                    outer.max_inflight = max(outer.max_inflight, outer.inflight)
                try:
                    action, delay = outer.script(call, body)
                    time.sleep(delay)
                    if action == "close":  # die mid-request: no answer at all
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                    elif action == "ok":
                        self._send(200, _answer(body))
                    elif action[0] == "abort":
                        ans = _answer(body)
                        ans["meta_info"]["finish_reason"] = {"type": "abort", "message": "weights updated"}
                        self._send(200, ans)
                    else:
                        self._send(action[1], {"error": f"scripted {action[1]}"})
                finally:
                    with outer.lock:
                        outer.inflight -= 1

            def _send(self, status, payload):
                send_json(self, status, payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, addr: None  # clients that hung up (abort, timeout): expected
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted():
    servers = []

    def make(script=None):
        s = Scripted(script) if script else Scripted()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def _closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


SP = SamplingParams(max_new_tokens=2)


def test_results_are_ordered_by_prompt_and_sample(scripted):
    srv = scripted()
    groups = RolloutClient(srv.url).generate_sync([[1, 2], [3, 4, 5], [6]], SP, n=3)
    assert [[s.output_ids for s in g] for g in groups] == [[[2, 2]] * 3, [[5, 3]] * 3, [[6, 1]] * 3]
    assert srv.calls == 9  # n samples = n requests
    assert all("n" not in b["sampling_params"] for b in srv.bodies)
    assert all(b["logprob_start_len"] == -1 and b["return_logprob"] for b in srv.bodies)


def test_5xx_is_retried_with_backoff_then_succeeds(scripted):
    srv = scripted(lambda call, body: (("status", 503) if call <= 2 else "ok", 0.0))
    client = RolloutClient(srv.url, ClientOptions(max_attempts=3, backoff_initial_s=0.1, backoff_max_s=1.0))
    t0 = time.monotonic()
    [[sample]] = client.generate_sync([[1, 2]], SP)
    elapsed = time.monotonic() - t0
    assert sample.output_ids == [2, 2] and srv.calls == 3 and client.stats["retries"] == 2
    assert elapsed >= 0.05 + 0.1  # jittered backoff: >= half of 0.1 and of 0.2
    rids = [b["rid"] for b in srv.bodies]
    assert len(set(rids)) == 3  # every attempt has its own request id


def test_4xx_is_not_retried_and_reads_in_one_line(scripted):
    srv = scripted(lambda call, body: (("status", 400), 0.0))
    with pytest.raises(RequestRejected) as info:
        RolloutClient(srv.url, ClientOptions(**FAST)).generate_sync([[1]], SP)
    assert srv.calls == 1 and info.value.status == 400
    assert str(info.value) == f"SGLang server {srv.url} rejected the request (HTTP 400): scripted 400"


def test_unreachable_server_fails_after_max_attempts_in_one_line():
    url = _closed_url()
    client = RolloutClient(url, ClientOptions(max_attempts=4, **FAST))
    with pytest.raises(ServerUnreachable) as info:
        client.generate_sync([[1]], SP)
    msg = str(info.value)
    assert "\n" not in msg and url in msg and "after 4 attempts" in msg and "connection refused" in msg
    assert client.stats["requests"] == 4


def test_failover_to_another_server_loses_no_sample(scripted, caplog):
    good, dead = scripted(), _closed_url()
    client = RolloutClient([dead, good.url], ClientOptions(max_attempts=3, **FAST))
    with caplog.at_level("WARNING", logger="dcpo_mcore.rollout"):
        groups = client.generate_sync([[i, i + 1] for i in range(5)], SP, n=4)
    assert [len(g) for g in groups] == [4] * 5 and good.calls == 20
    down = [r.getMessage() for r in caplog.records if dead in r.getMessage()]
    assert len(down) == 1 and "connection refused" in down[0]  # one line per server going down


def test_a_server_dying_mid_request_is_retried(scripted):
    srv = scripted(lambda call, body: ("close" if call in (2, 3) else "ok", 0.0))
    groups = RolloutClient(srv.url, ClientOptions(max_concurrency=1, **FAST)).generate_sync([[1], [2], [3]], SP)
    assert [g[0].output_ids for g in groups] == [[1, 1], [2, 1], [3, 1]] and srv.calls == 5


def test_per_request_timeout_is_retried_then_reported(scripted):
    srv = scripted(lambda call, body: ("ok", 1.0))
    client = RolloutClient(srv.url, ClientOptions(request_timeout_s=0.2, max_attempts=2, **FAST))
    t0 = time.monotonic()
    with pytest.raises(ServerUnreachable, match="timed out"):
        client.generate_sync([[1]], SP)
    assert time.monotonic() - t0 < 1.5 and srv.calls == 2


def test_a_sample_the_server_aborted_is_regenerated(scripted):
    srv = scripted(lambda call, body: (("abort",) if call == 1 else "ok", 0.0))
    client = RolloutClient(srv.url, ClientOptions(**FAST))
    [[sample]] = client.generate_sync([[4, 5]], SP)
    assert sample.finished_by == "length" and client.stats["aborted_by_server"] == 1
    [[kept]] = RolloutClient(srv.url, ClientOptions(retry_aborted=False)).generate_sync([[4, 5]], SP)
    assert srv.calls == 3 and kept.finished_by == "length"


def test_concurrency_is_bounded(scripted):
    srv = scripted(lambda call, body: ("ok", 0.1))
    RolloutClient(srv.url, ClientOptions(max_concurrency=3)).generate_sync([[i] for i in range(12)], SP)
    assert srv.calls == 12 and 2 <= srv.max_inflight <= 3


def test_abort_cancels_everything_in_flight(scripted):
    srv = scripted(lambda call, body: ("ok", 5.0))
    client = RolloutClient(srv.url, ClientOptions(max_concurrency=4))
    aborted_at: list[float] = []

    def abort_once_all_four_are_in_flight():
        # Not a fixed delay: on a loaded machine the fourth request may reach the server after it, and
        # its rid would then be aborted without ever having been received (a race of the test, not the
        # client). The abort comes once the server holds all four requests.
        deadline = time.monotonic() + 20
        while len(srv.bodies) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        aborted_at.append(time.monotonic())
        client.abort()

    threading.Thread(target=abort_once_all_four_are_in_flight, daemon=True).start()
    with pytest.raises(GenerationAborted, match="0 of 8"):
        client.generate_sync([[i] for i in range(8)], SP)
    assert len(srv.bodies) == 4 and time.monotonic() - aborted_at[0] < 4.0  # long before any answer (5 s)
    deadline = time.monotonic() + 20
    while len(srv.aborted) < 4 and time.monotonic() < deadline:  # the in-flight rids were aborted
        time.sleep(0.05)
    assert sorted(srv.aborted) == sorted(b["rid"] for b in srv.bodies)
    srv.script = lambda call, body: ("ok", 0.0)
    assert client.generate_sync([[7]], SP)[0][0].output_ids == [7, 1]  # the client stays usable


def test_seeds_are_derived_per_prompt_key_step_and_sample(scripted):
    srv = scripted()
    client = RolloutClient(srv.url, seed=11)
    prompts = [PromptInput(key="math:1", input_ids=[1]), PromptInput(key="math:2", input_ids=[1])]
    groups = client.generate_sync(prompts, SP, n=2, step=5)
    sent = [[s.weight_version for s in g] for g in groups]  # the scripted server echoes the seed here
    assert sent == [[f"seed={derive_seed(11, 5, k, j)}" for j in range(2)] for k in ("math:1", "math:2")]
    seeds = {derive_seed(11, st, k, j) for st in (0, 1) for k in ("a", "b") for j in range(3)}
    assert len(seeds) == 12 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(11, 5, "math:1", 0) == derive_seed(11, 5, "math:1", 0)
    assert RolloutClient(srv.url).generate_sync([[1]], SP)[0][0].weight_version == "seed=None"


def test_generate_sync_refuses_a_running_loop(scripted):
    import asyncio

    client = RolloutClient(scripted().url)

    async def inside():
        with pytest.raises(RuntimeError, match="await client.generate"):
            client.generate_sync([[1]], SP)

    asyncio.run(inside())


def test_waiting_for_a_restart_is_bounded_in_time():
    class Restarting:  # an owner that keeps saying "restarting" while nothing ever comes back
        def __init__(self, url):
            self.url, self.reports = url, 0

        def generate_urls(self):
            return [self.url]

        def is_ready(self, url):
            return True

        def report_failure(self, url, cause):
            self.reports += 1
            return True

    ep = Restarting(_closed_url())
    client = RolloutClient(ep, ClientOptions(max_attempts=2, recovery_timeout_s=0.3, **FAST))
    with pytest.raises(ServerUnreachable, match="still failing 0 s after its restart began"):
        client.generate_sync([[1]], SP)
    assert ep.reports > 2  # more tries than max_attempts: restarts do not use the budget up


def test_a_restarting_owner_makes_requests_wait_instead_of_failing(scripted):
    srv = scripted()

    class Owner:  # the only server is "restarting" for 0.4 s, then ready
        def __init__(self):
            self.ready_at = time.monotonic() + 0.4

        def generate_urls(self):
            return [srv.url]

        def is_ready(self, url):
            return time.monotonic() >= self.ready_at

        def report_failure(self, url, cause):
            return True

    client = RolloutClient(Owner(), ClientOptions(max_attempts=1))
    t0 = time.monotonic()
    [[sample]] = client.generate_sync([[3]], SP)
    assert sample.output_ids == [3, 1] and time.monotonic() - t0 >= 0.35
    assert client.stats["waited_for_restart"] == 1


def test_client_options_from_the_rollout_config():
    from dcpo_mcore.config.sections import RolloutConfig

    opts = ClientOptions.from_config(RolloutConfig(max_concurrency=8, request_timeout_s=30.0), max_attempts=2)
    assert (opts.max_concurrency, opts.request_timeout_s, opts.max_attempts) == (8, 30.0, 2)
